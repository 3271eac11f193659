"""Torch engine vs Hugging Face ``generate`` on SmolLM2-135M-Instruct (same dequantized weights).

Measures, on this machine, in one run, at batch sizes B = 1, 8 and 32:

- **serving** (the headline figure): a seeded workload of ``--requests`` requests per B with mixed
  prompt lengths (``--serve-prompt``, uniform) and mixed output lengths (``--serve-output``,
  uniform; every request has a fixed output length: ``ignore_eos``), all arriving at once.
  Ours: every request goes to one ``TorchEngine`` with ``max_batch_size = B`` (continuous
  batching refills a slot as soon as a request finishes; chunked prefill on), ``step()`` until
  done. Baseline: what a transformers user would do: the requests in arrival order in static
  batches of B through ``model.generate`` (left padding, attention mask, ``pad_token_id``,
  greedy, KV cache, ``max_new_tokens = min_new_tokens`` = the batch's longest output).
  Both: useful output tokens (each request's own output length) / wall time, prefill included;
  defaults N = 4 / 32 / 64 for B = 1 / 8 / 32, prompts 16–96, outputs 8–64 tokens (cut from
  N = 4B, 16–256 / 8–128 to keep the run near 6 minutes on 1 thread; B = 1 is sequential
  on both sides, so its N only sets the run time);
- **step**: batch / median wall time of a full-batch decode step (prompt ``--prompt-len``
  tokens, ``--new`` new tokens, the same for every request). Ours: ``engine.step()`` calls
  (schedule, forward, sampling); baseline: the interval between consecutive ``generate``
  steps (a logits processor stamps each one). Neither counts its prefill. At batch 32 both
  sides are matmul-bound and do the same FLOPs per step, so this cannot show what continuous
  batching buys; the serving mode does;
- prefill tokens/s (one ``--prefill-len`` prompt, one step) for both;
- KV bytes per token of the paged cache.

Ours and the baseline run interleaved (the order alternates), best of ``--repeat`` each; the
machine's load average is recorded. Greedy outputs of the two sides are compared per request.
Prints a table, writes bench/results/engine.json and a markdown table next to it (same stem,
``.md``). Needs ``pip install transformers``. About 6 minutes with the defaults, 1 thread.

    python bench/engine.py [--threads 1] [--dtype float32] [--repeat 2]
    python bench/engine.py --dtype bfloat16 --out bench/results/engine_bf16.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time

import torch

from llumnix_zmq.engine.base import EngineRequest
from llumnix_zmq.engine.blocks import blocks_for_tokens
from llumnix_zmq.engine.torch import make_torch_engine
from llumnix_zmq.engine.torch.tokenizer import load_model_tokenizer
from llumnix_zmq.engine.torch.weights import DTYPES, load_weights
from llumnix_zmq.protocol.messages import SamplingParams

TEXT = ("Live migration moves a running request and its KV cache from one model instance to "
        "another while it keeps decoding, the way an operating system moves a process. ")


def prompts(tok, n: int, length: int) -> list[list[int]]:
    base = tok.encode(TEXT * (length // 8 + 2))
    return [base[i : i + length] for i in range(n)]  # same length, different contents


def workload(tok, n: int, prompt: tuple[int, int], output: tuple[int, int],
             seed: int) -> list[tuple[list[int], int]]:
    """``n`` (prompt ids, output length) pairs: uniform lengths, text from a random offset."""
    rng = random.Random(seed)
    base = tok.encode(TEXT)
    while len(base) < prompt[1] + 64:
        base = base + tok.encode(TEXT)
    out = []
    for _ in range(n):
        length, off = rng.randint(*prompt), rng.randrange(64)
        out.append((base[off : off + length], rng.randint(*output)))
    return out


# ----------------------------------------------------------------------------- ours


def ours_decode(engine, batch: list[list[int]], new: int) -> tuple[float, list[list[int]]]:
    sp = SamplingParams(max_tokens=new, ignore_eos=True)
    for i, p in enumerate(batch):
        engine.add_request(EngineRequest(f"b{len(batch)}-{i}", p, sp))
    out = {f"b{len(batch)}-{i}": [] for i in range(len(batch))}
    step_times = []
    while engine.has_work():
        t0 = time.perf_counter()
        res = engine.step()
        if res.num_prefill_tokens == 0 and res.num_decode_tokens == len(batch):
            step_times.append(time.perf_counter() - t0)
        for d in res.deltas:
            out[d.request_id].extend(d.token_ids)
    rate = len(batch) / statistics.median(step_times)
    return rate, [out[k] for k in sorted(out, key=lambda s: int(s.split("-")[1]))]


def ours_prefill(engine, prompt: list[int]) -> float:
    engine.add_request(EngineRequest("prefill", prompt, SamplingParams(max_tokens=1)))
    t0 = time.perf_counter()
    while engine.has_work():
        engine.step()
    return len(prompt) / (time.perf_counter() - t0)


def ours_serving(engine, reqs: list[tuple[list[int], int]], batch: int,
                 tag: str) -> tuple[float, float, list[list[int]]]:
    """(useful tokens/s, seconds, outputs): every request submitted at once to an engine whose
    running set is capped at ``batch`` (continuous batching refills freed slots)."""
    # ``max_batch_size`` is read only by the scheduler's admission: setting it here is what
    # constructing the engine with max_batch_size=batch does, without reloading the weights
    saved = engine.sched.max_batch_size
    engine.max_batch_size = engine.sched.max_batch_size = batch
    ids = [f"{tag}-{i}" for i in range(len(reqs))]
    out: dict[str, list[int]] = {r: [] for r in ids}
    try:
        t0 = time.perf_counter()
        for rid, (prompt, new) in zip(ids, reqs):
            engine.add_request(EngineRequest(rid, prompt, SamplingParams(max_tokens=new,
                                                                         ignore_eos=True)))
        while engine.has_work():
            for d in engine.step().deltas:
                out[d.request_id].extend(d.token_ids)
        dt = time.perf_counter() - t0
    finally:
        engine.max_batch_size = engine.sched.max_batch_size = saved
    toks = [out[r] for r in ids]
    useful = sum(new for _, new in reqs)
    assert sum(map(len, toks)) == useful, "ours produced a wrong number of tokens"
    return useful / dt, dt, toks


# ----------------------------------------------------------------------------- baseline


def hf_model(cfg, sd, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    hc = LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings, attn_implementation="sdpa",
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(hc)
    model.load_state_dict(sd, strict=False, assign=True)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    model.model.rotary_emb.to_empty(device="cpu")
    model.model.rotary_emb.__init__(hc)  # rebuild the inv_freq buffer off the meta device
    return model.to(dtype).eval()


PAD = 0  # <|endoftext|>; never attended to (attention mask 0)


class _StepClock:
    """A logits processor that timestamps every generated position (called once per step)."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def hf_generate(model, batch: list[list[int]], new: int) -> tuple[float, float, list[list[int]]]:
    """(prefill seconds, decode tokens/s, new tokens) of one ``generate`` call."""
    from transformers import LogitsProcessorList

    ids = torch.tensor(batch)
    clock = _StepClock()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                             min_new_tokens=new, do_sample=False, pad_token_id=0,
                             eos_token_id=None, logits_processor=LogitsProcessorList([clock]))
    t = clock.times
    steps = [b - a for a, b in zip(t, t[1:])]
    decode = len(batch) / statistics.median(steps) if steps else 0.0
    return t[0] - t0, decode, out[:, ids.shape[1] :].tolist()


def hf_decode(model, batch, new) -> tuple[float, list[list[int]]]:
    _, rate, toks = hf_generate(model, batch, new)
    return rate, toks


def hf_serving(model, reqs: list[tuple[list[int], int]],
               batch: int) -> tuple[float, float, list[list[int]]]:
    """(useful tokens/s, seconds, outputs): the requests in arrival order in static batches of
    ``batch`` through ``generate``; a batch runs until its longest output is done, each request
    counts only its own output length."""
    t0 = time.perf_counter()
    toks = []
    for s in range(0, len(reqs), batch):
        group = reqs[s : s + batch]
        width, new = max(len(p) for p, _ in group), max(n for _, n in group)
        ids = torch.tensor([[PAD] * (width - len(p)) + p for p, _ in group])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p, _ in group])
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=new,
                                 min_new_tokens=new, do_sample=False, use_cache=True,
                                 pad_token_id=PAD, eos_token_id=None)
        toks.extend(out[j, width : width + n].tolist() for j, (_, n) in enumerate(group))
    dt = time.perf_counter() - t0
    useful = sum(n for _, n in reqs)
    assert sum(map(len, toks)) == useful, "generate stopped early"
    return useful / dt, dt, toks


# ----------------------------------------------------------------------------- main


def _range(text: str) -> tuple[int, int]:
    lo, hi = (int(x) for x in text.split("-"))
    return lo, hi


def _best(runs: list[tuple[float, ...]]) -> tuple[float, ...]:
    return max(runs, key=lambda r: r[0])


def _same(a: list[list[int]], b: list[list[int]]) -> str:
    return f"{sum(x == y for x, y in zip(a, b))}/{len(a)}"


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


METHOD = (
    "Top-level ours/baseline/ratio per batch size B are the 'serving' figures: useful output "
    "tokens / wall time (prefill included) for a seeded workload of N requests with mixed prompt "
    "and output lengths (every request a fixed output length, ignore_eos), all arriving at once. "
    "Ours: one TorchEngine, max_batch_size = B, continuous batching, chunked prefill. Baseline: "
    "transformers LlamaForCausalLM.generate on the same dequantized weights, the requests in "
    "arrival order in static batches of B (left padding + attention mask, greedy, KV cache, "
    "max_new_tokens = min_new_tokens = the batch's longest output, eos_token_id None), counting "
    "each request's own "
    "output length only. 'step': B / median wall time of a full-batch decode step (no prefill), "
    "same prompts on both sides. Best of `repeat` interleaved runs (order alternating); same "
    "dtype and torch threads on both sides. same_tokens: requests whose greedy outputs are "
    "identical on both sides."
)


def write_markdown(result: dict, path: str) -> None:
    w = result["serving_workload"]
    pf = result["prefill_tokens_per_s"]
    lines = [
        f"# Torch engine vs transformers `generate` — {result['model']}, {result['dtype']}",
        "",
        f"{result['device']}; load average (1/5/15 min) {result['load_average']['start']} at "
        f"start, {result['load_average']['end']} at the end; best of {result['repeat']} "
        f"interleaved runs; {result['bench_seconds']:.0f} s in all.",
        "",
        "Serving: useful output tokens/s for N requests, prompts "
        f"{w['prompt_len'][0]}–{w['prompt_len'][1]} tokens, outputs {w['output_len'][0]}–"
        f"{w['output_len'][1]} tokens (uniform, seed {w['seed']}), all at once. Ours: continuous "
        "batching, max_batch_size = B. Baseline: static batches of B with `generate`. "
        f"Step: B / median full-batch decode step (prompt {result['step_prompt_len']}, "
        f"{result['step_new_tokens']} new tokens, no prefill).",
        "",
        "| B | N | serving ours tok/s | serving HF tok/s | **ratio** | same tokens "
        "| step ours tok/s | step HF tok/s | ratio | same tokens |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for b, r in result["batch"].items():
        sv = r["serving"]
        st = r.get("step")
        step = (f"{st['ours']:.1f} | {st['baseline']:.1f} | {st['ratio']:.2f} | "
                f"{st['same_tokens']}" if st else "– | – | – | –")
        lines.append(f"| {b} | {sv['requests']} | {sv['ours']:.1f} | {sv['baseline']:.1f} | "
                     f"**{sv['ratio']:.2f}** | {sv['same_tokens']} | {step} |")
    lines += [
        "",
        f"Prefill ({pf['prompt_len']}-token prompt): ours {pf['ours']:.1f} tok/s, HF "
        f"{pf['baseline']:.1f} tok/s (ratio {pf['ratio']:.2f}). "
        f"KV cache: {result['kv_bytes_per_token']} bytes per token.",
        "",
        "Command: `" + result["command"] + "`",
        "",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)  # robust on a shared 2-core box
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--repeat", type=int, default=2)
    # serving workload
    ap.add_argument("--requests", default="4,32,64",
                    help="requests N per batch size (aligned with --batches)")
    ap.add_argument("--serve-prompt", default="16-96", help="prompt length range (uniform)")
    ap.add_argument("--serve-output", default="8-64", help="output length range (uniform)")
    ap.add_argument("--seed", type=int, default=0)
    # step mode
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new", type=int, default=16)
    ap.add_argument("--no-step", action="store_true", help="skip the step-level mode")
    ap.add_argument("--prefill-len", type=int, default=512)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "engine.json"))
    args = ap.parse_args()
    t_start, load_start = time.perf_counter(), _load()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    counts = [int(n) for n in args.requests.split(",")]
    if len(counts) != len(batches):
        ap.error("--requests needs one count per batch size")
    p_rng, o_rng = _range(args.serve_prompt), _range(args.serve_output)
    tok = load_model_tokenizer("smollm2")
    bs = 16
    need = max(max(batches) * blocks_for_tokens(args.prompt_len + args.new + 1, bs),
               max(batches) * blocks_for_tokens(p_rng[1] + o_rng[1] + 1, bs),
               blocks_for_tokens(args.prefill_len + 2, bs))
    engine = make_torch_engine("smollm2", dtype=args.dtype, block_size=bs,
                               num_blocks=need + need // 4, max_batch_size=max(batches),
                               max_num_batched_tokens=2048)
    cfg, sd = load_weights("smollm2", args.dtype)
    model = hf_model(cfg, sd, DTYPES[args.dtype])
    del sd
    warm = prompts(tok, 2, 16)
    ours_decode(engine, warm, 4), hf_decode(model, warm, 4)
    warm_reqs = workload(tok, 3, (8, 24), (2, 4), seed=-1)
    ours_serving(engine, warm_reqs, 2, "warm"), hf_serving(model, warm_reqs, 2)

    result = {"method": METHOD, "batch": {},
              "model": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized)",
              "dtype": args.dtype, "threads": args.threads, "repeat": args.repeat,
              "serving_workload": {"prompt_len": list(p_rng), "output_len": list(o_rng),
                                   "distribution": "uniform", "seed": args.seed,
                                   "arrival": "all at t=0",
                                   "requests": dict(zip(map(str, batches), counts))},
              "step_prompt_len": args.prompt_len, "step_new_tokens": args.new}
    print(f"{'batch':>5} {'N':>4} | {'serving: ours':>13} {'HF':>7} {'ratio':>6} {'same':>6} | "
          f"{'step: ours':>10} {'HF':>7} {'ratio':>6} {'same':>6}")
    for b, n in zip(batches, counts):
        # ------------------------------------------------------------------ serving
        reqs = workload(tok, n, p_rng, o_rng, args.seed)
        ours_runs, hf_runs = [], []
        for r in range(args.repeat):  # interleaved, the order alternating (the box is shared)
            order = ("ours", "hf") if r % 2 == 0 else ("hf", "ours")
            for side in order:
                if side == "ours":
                    ours_runs.append(ours_serving(engine, reqs, b, f"s{b}.{r}"))
                else:
                    hf_runs.append(hf_serving(model, reqs, b))
        o_rate, o_s, o_toks = _best(ours_runs)
        h_rate, h_s, h_toks = _best(hf_runs)
        serving = {"ours": round(o_rate, 2), "baseline": round(h_rate, 2),
                   "ratio": round(o_rate / h_rate, 3), "requests": n,
                   "useful_tokens": sum(k for _, k in reqs),
                   "prompt_tokens": sum(len(p) for p, _ in reqs),
                   "ours_s": round(o_s, 2), "baseline_s": round(h_s, 2),
                   "ours_runs_tok_s": [round(x[0], 2) for x in ours_runs],
                   "baseline_runs_tok_s": [round(x[0], 2) for x in hf_runs],
                   "same_tokens": _same(o_toks, h_toks)}
        entry = {"ours": serving["ours"], "baseline": serving["baseline"],
                 "ratio": serving["ratio"], "serving": serving}
        # ------------------------------------------------------------------ step
        if not args.no_step:
            batch = prompts(tok, b, args.prompt_len)
            ours = base = 0.0
            for r in range(args.repeat):
                if r % 2 == 0:
                    rate, ours_toks = ours_decode(engine, batch, args.new)
                    ours = max(ours, rate)
                    rate, hf_toks = hf_decode(model, batch, args.new)
                    base = max(base, rate)
                else:
                    rate, hf_toks = hf_decode(model, batch, args.new)
                    base = max(base, rate)
                    rate, ours_toks = ours_decode(engine, batch, args.new)
                    ours = max(ours, rate)
            entry["step"] = {"ours": round(ours, 2), "baseline": round(base, 2),
                             "ratio": round(ours / base, 3),
                             "same_tokens": _same(ours_toks, hf_toks)}
        st = entry.get("step", {"ours": 0.0, "baseline": 0.0, "ratio": 0.0, "same_tokens": "-"})
        result["batch"][str(b)] = entry
        print(f"{b:>5} {n:>4} | {o_rate:>13.1f} {h_rate:>7.1f} {o_rate / h_rate:>6.2f} "
              f"{serving['same_tokens']:>6} | {st['ours']:>10.1f} {st['baseline']:>7.1f} "
              f"{st['ratio']:>6.2f} {st['same_tokens']:>6}", flush=True)
    long = prompts(tok, 1, args.prefill_len)[0]
    ours_pf = base_pf = 0.0
    for r in range(3):  # interleaved, the order alternating; best of 3 each
        for side in (("ours", "hf") if r % 2 == 0 else ("hf", "ours")):
            if side == "ours":
                ours_pf = max(ours_pf, ours_prefill(engine, long))
            else:
                base_pf = max(base_pf, len(long) / hf_generate(model, [long], 1)[0])
    result["prefill_tokens_per_s"] = {"ours": round(ours_pf, 1), "baseline": round(base_pf, 1),
                                      "ratio": round(ours_pf / base_pf, 3),
                                      "prompt_len": len(long)}
    result["kv_bytes_per_token"] = engine.kv_bytes_per_token
    result["device"] = (f"cpu: {platform.processor() or platform.machine()}, "
                        f"{os.cpu_count()} cores, torch {args.threads} thread(s) on both sides")
    result["load_average"] = {"start": load_start, "end": _load(), "cores": os.cpu_count()}
    result["bench_seconds"] = round(time.perf_counter() - t_start, 1)
    argv = " ".join(sys.argv[1:])
    result["command"] = f"python bench/engine.py {argv}".strip()
    print(f"prefill ({len(long)} tokens): ours {ours_pf:.1f} tok/s, HF {base_pf:.1f} tok/s")
    print(f"KV bytes per token: {engine.kv_bytes_per_token}")
    print(f"load average: {result['load_average']}; {result['bench_seconds']:.0f} s")
    engine.allocator_check()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    md = os.path.splitext(args.out)[0] + ".md"
    write_markdown(result, md)
    print(f"wrote {args.out}, {md}")


if __name__ == "__main__":
    main()
