"""Torch engine vs Hugging Face ``generate`` on SmolLM2-135M-Instruct (same dequantized weights).

Measures, on this machine, in one run:
- decode tokens/s at batch 1, 8 and 32 (prompt ``--prompt-len`` tokens, ``--new`` new tokens):
  batch / median wall time of a full-batch decode step. Ours: ``engine.step()`` calls (schedule,
  forward, sampling); baseline: the interval between consecutive ``generate`` steps (a logits
  processor stamps each one). Neither counts its prefill. The median resists the bursts of a
  shared machine; best of ``--repeat`` interleaved runs;
- prefill tokens/s (one ``--prefill-len`` prompt, one step) for both;
- KV bytes per token of the paged cache.
Prints a table and writes bench/results/engine.json. Needs ``pip install transformers``.

    python bench/engine.py [--threads 1] [--dtype float32] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from llumnix_zmq.engine.base import EngineRequest
from llumnix_zmq.engine.torch import make_torch_engine
from llumnix_zmq.engine.torch.tokenizer import load_model_tokenizer
from llumnix_zmq.engine.torch.weights import DTYPES, load_weights
from llumnix_zmq.protocol.messages import SamplingParams

TEXT = ("Live migration moves a running request and its KV cache from one model instance to "
        "another while it keeps decoding, the way an operating system moves a process. ")


def prompts(tok, n: int, length: int) -> list[list[int]]:
    base = tok.encode(TEXT * (length // 8 + 2))
    return [base[i : i + length] for i in range(n)]  # same length, different contents


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


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)  # robust on a shared 2-core box
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--prefill-len", type=int, default=512)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "engine.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    tok = load_model_tokenizer("smollm2")
    engine = make_torch_engine("smollm2", dtype=args.dtype, num_blocks=2048 // 16 * 16 * 2,
                               max_batch_size=max(batches), max_num_batched_tokens=2048)
    cfg, sd = load_weights("smollm2", args.dtype)
    model = hf_model(cfg, sd, DTYPES[args.dtype])
    warm = prompts(tok, 2, 16)
    ours_decode(engine, warm, 4), hf_decode(model, warm, 4)

    result = {"batch": {}, "model": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized)",
              "dtype": args.dtype, "threads": args.threads, "prompt_len": args.prompt_len,
              "new_tokens": args.new}
    print(f"{'batch':>5} {'ours tok/s':>11} {'HF tok/s':>10} {'ratio':>6}  same tokens")
    for b in batches:
        batch = prompts(tok, b, args.prompt_len)
        # best of ``--repeat`` runs each, interleaved (the machine is shared and noisy)
        ours = base = 0.0
        for _ in range(args.repeat):
            rate, ours_toks = ours_decode(engine, batch, args.new)
            ours = max(ours, rate)
            rate, hf_toks = hf_decode(model, batch, args.new)
            base = max(base, rate)
        same = sum(a == h for a, h in zip(ours_toks, hf_toks))
        result["batch"][str(b)] = {"ours": round(ours, 2), "baseline": round(base, 2),
                                   "ratio": round(ours / base, 3), "same_tokens": f"{same}/{b}"}
        print(f"{b:>5} {ours:>11.1f} {base:>10.1f} {ours / base:>6.2f}  {same}/{b}")
    long = prompts(tok, 1, args.prefill_len)[0]
    ours_pf = max(ours_prefill(engine, long) for _ in range(2))
    t_one = min(hf_generate(model, [long], 1)[0] for _ in range(2))
    result["prefill_tokens_per_s"] = round(ours_pf, 1)
    result["prefill_tokens_per_s_baseline"] = round(len(long) / t_one, 1)
    result["kv_bytes_per_token"] = engine.kv_bytes_per_token
    result["device"] = f"cpu: {platform.processor() or platform.machine()}, {args.threads} threads"
    print(f"prefill ({len(long)} tokens): ours {ours_pf:.1f} tok/s, "
          f"HF {len(long) / t_one:.1f} tok/s")
    print(f"KV bytes per token: {engine.kv_bytes_per_token}")
    engine.allocator_check()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
