"""What a ZeroMQ frame costs: the same bytes sent as multipart messages of 1, 60 or 240 frames.

Why it matters: a migration part is one multipart message. With a per-layer KV layout each run
of blocks is 2 x num_layers frames (60 for SmolLM2); the torch engine's block-major pool sends
one frame per run (engine/torch/kv_cache.py). This measures the difference on this machine,
with nothing else in the path: 377 MiB (the KV of 8,192 SmolLM2 tokens) in 16 MiB parts, each
part split into N equal frames (zero-copy views of one buffer), DEALER -> ROUTER over ipc in one
context and one uvloop event loop (as bench/migration.py's raw runs), the receiver taking every
message copy=False and dropping it. Rounds interleave the frame counts, so drift in the
machine's load hits each alike; the table shows the median and best per count.

    python bench/zmq_frames.py [--rounds 5] [--frames 1,60,240] [--out bench/results]

Writes zmq_frames.json and zmq_frames.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq
import zmq.asyncio

RESULTS = Path(__file__).resolve().parent / "results"
TOTAL = 377 << 20
PART = 16 << 20


async def one_run(ctx, addr: str, buf: np.ndarray, nframes: int) -> float:
    """GB/s moving TOTAL bytes as TOTAL // PART messages of ``nframes`` frames each."""
    router = ctx.socket(zmq.ROUTER)
    router.bind(addr)
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(addr)
    try:
        await dealer.send_multipart([b"h", buf[:1024]])
        await router.recv_multipart(copy=False)
        nparts, size = TOTAL // PART, PART // nframes

        async def send():
            for p in range(nparts):
                base = p * PART
                frames = [buf[base + k * size: base + (k + 1) * size] for k in range(nframes)]
                await dealer.send_multipart([b"h", *frames], copy=False)

        t0 = time.perf_counter()
        sender = asyncio.create_task(send())
        for _ in range(nparts):
            await router.recv_multipart(copy=False)
        await sender
        return nparts * PART / (time.perf_counter() - t0) / 1e9
    finally:
        router.close(linger=0)
        dealer.close(linger=0)


async def run(rounds: int, counts: list[int]) -> dict:
    ctx = zmq.asyncio.Context()
    buf = np.ones(TOTAL, dtype=np.uint8)  # pages touched before timing
    rundir = tempfile.mkdtemp(prefix="llx-frames-")
    runs: dict[int, list[float]] = {n: [] for n in counts}
    i = 0
    for _ in range(rounds):
        for n in counts:
            i += 1
            runs[n].append(await one_run(ctx, f"ipc://{rundir}/f{i}.sock", buf, n))
    ctx.term()
    base = statistics.median(runs[counts[0]])
    return {"bytes": TOTAL, "part_bytes": PART, "rounds": rounds,
            "frames": {str(n): {"runs_gbps": v, "median_gbps": statistics.median(v),
                                "best_gbps": max(v),
                                "median_vs_first": statistics.median(v) / base}
                       for n, v in runs.items()}}


def report(res: dict) -> str:
    rows = ["| frames per 16 MiB part | frame size | median GB/s | best GB/s | median vs 1 frame |",
            "|---:|---:|---:|---:|---:|"]
    for n, r in res["frames"].items():
        rows.append(f"| {n} | {res['part_bytes'] // int(n) >> 10} KiB | {r['median_gbps']:.2f} "
                    f"| {r['best_gbps']:.2f} | {r['median_vs_first']:.2f} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--frames", default="1,60,240")
    p.add_argument("--out", default=str(RESULTS))
    a = p.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    res = asyncio.run(run(a.rounds, [int(x) for x in a.frames.split(",")]))
    text = report(res)
    print(text)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "zmq_frames.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "zmq_frames.md").write_text(
        "# ZeroMQ: the same bytes in more frames\n\n" + __doc__.split("\n\n")[1] + "\n\n"
        + text + "\n\nCommand: `python bench/zmq_frames.py`\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
