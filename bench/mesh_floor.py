"""The floor of the mesh's request path: the same stack with no application logic.

    python bench/mesh_floor.py [--requests 768] [--seed 1] [--rate 18] [--step-ms 55] [--idle]
                               [--json bench/results/mesh_floor.json]

serving_overhead.py measures what the mesh adds to TTFT; this asks how much of it any mesh on
this stack adds: aiohttp frontend on uvloop -> ZeroMQ DEALER -> worker ROUTER (zmq.asyncio,
uvloop) -> PUSH -> frontend PULL -> SSE chunk to the client, and nothing else. The load is
serving_overhead.py's: 64-token prompts and outputs, Poisson 18 req/s (~64 live streams), the
worker stepping every 55 ms with one token per live request per step, new requests' first
tokens in their own message sent first, which the frontend applies first, yielding once so
their handlers write before the rest.

Per request, the time outside the worker = the client's TTFT (wire_client.py: kernel receive
stamp of the first token's bytes) minus its time in the worker (received -> first token emitted:
waiting for a step). The client sends its index in the body; the worker sends its receive and
emit times with the first token; the frontend logs them and its own per index (JSON lines).
All times are time.perf_counter(): CLOCK_MONOTONIC, one clock for all processes on Linux.

``--idle``: one request at a time, 20 ms apart, the worker answering at once (no stepping):
the round trip of an idle mesh (the first 20 requests warm up and are not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import numpy as np
import uvloop
import zmq
import zmq.asyncio
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from serving_overhead import _run, free_port, pct  # noqa: E402
from wire_client import WirePool, WireResult, run_wire  # noqa: E402

from llumnix_zmq.workload import build_workload  # noqa: E402

IDLE_WARMUP = 20
WORKLOAD = "fixed:64-64"
LOG = "front.jsonl"
# name, what, and the request's times whose spans (a -> b, c -> d, ...) it sums: start (client
# sent), recv/emit (worker got it/emitted its first token), front_in/front_write (frontend got
# that/wrote the chunk), arrival/read (the chunk reached the client's socket/the client read it)
SEGMENTS = (("ttft", "client TTFT (kernel stamp); --idle: the round trip", "start arrival"),
            ("ttft_user", "client TTFT, read by the client", "start read"),
            ("in_worker", "waiting in the worker for a step (not outside)", "recv emit"),
            ("outside_worker", "ttft - in_worker", "start recv emit arrival"),
            ("outside_worker_user", "ttft_user - in_worker", "start recv emit read"),
            ("client_to_worker", "client sent -> worker received", "start recv"),
            ("worker_to_client", "worker emitted -> client socket", "emit arrival"),
            ("worker_to_client_user", "worker emitted -> client read", "emit read"),
            ("worker_to_frontend", "worker emitted -> frontend got it", "emit front_in"),
            ("frontend_to_write", "frontend got it -> chunk written", "front_in front_write"))


def worker(addr_in: str, addr_back: str, step_s: float, idle: bool, deadline: float) -> None:
    """Steps every ``step_s`` until ``deadline`` (perf_counter); ``idle``: answers at once."""
    async def main():
        ctx = zmq.asyncio.Context()
        router, push = ctx.socket(zmq.ROUTER), ctx.socket(zmq.PUSH)
        router.bind(addr_in)
        push.connect(addr_back)
        await push.send(msgpack.packb({"hello": 1}))
        live, new = {}, []  # live: tokens left per index; new: (index, tokens, received)

        async def rx():
            while time.perf_counter() < deadline:
                _, payload = await router.recv_multipart()
                t_recv = time.perf_counter()
                m = msgpack.unpackb(payload)
                if idle:  # answer at once: the first token is the last
                    await push.send(msgpack.packb(
                        {"first": [[m["i"], t_recv, time.perf_counter(), True]]}))
                else:
                    new.append((m["i"], m["n"], t_recv))

        task = asyncio.create_task(rx())
        nxt = time.perf_counter() + step_s
        while not idle and time.perf_counter() < deadline:
            await asyncio.sleep(max(0.0, nxt - time.perf_counter()))
            nxt += step_s
            arrived = list(new)
            new.clear()
            if arrived:  # first tokens in their own message, before the step's others
                t_emit = time.perf_counter()
                await push.send(msgpack.packb(
                    {"first": [[i, tr, t_emit, n <= 1] for i, n, tr in arrived]}))
            rest = [[i, left <= 1] for i, left in live.items()]
            live = {i: left - 1 for i, left in live.items() if left > 1}
            live.update((i, n - 1) for i, n, _ in arrived if n > 1)
            if rest:
                await push.send(msgpack.packb({"rest": rest}))
        await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
        task.cancel()

    uvloop.run(main())


def frontend(port: int, addr_w: str, addr_back: str, log_path: str, deadline: float) -> None:
    """Serves /v1/completions until ``deadline``; one JSON line per request to ``log_path``."""
    async def main():
        log = open(log_path, "w", buffering=1)
        ctx = zmq.asyncio.Context()
        pull, dealer = ctx.socket(zmq.PULL), ctx.socket(zmq.DEALER)
        pull.bind(addr_back)
        await asyncio.wait_for(pull.recv(), 20)  # the worker's hello: it is up
        dealer.connect(addr_w)
        queues, times = {}, {}

        async def tokens():
            while time.perf_counter() < deadline:
                m = msgpack.unpackb(await pull.recv())
                t_in = time.perf_counter()
                for i, t_recv, t_emit, _ in m.get("first", ()):
                    times[i] = {"i": i, "recv": t_recv, "emit": t_emit, "front_in": t_in}
                for row in m.get("first") or m["rest"]:  # row: [index, ..., last token]
                    if row[0] in queues:
                        queues[row[0]].put_nowait(row[-1])
                if "first" in m:
                    await asyncio.sleep(0)  # let the first tokens' handlers write first

        async def completions(request):
            body = json.loads(await request.read())
            i, n = body["i"], body["max_tokens"]
            q = queues[i] = asyncio.Queue()
            chunk = {"id": f"cmpl-{i}", "object": "text_completion", "choices": [
                {"index": 0, "text": "A", "logprobs": None, "finish_reason": None}]}
            await dealer.send(msgpack.packb({"i": i, "n": n, "p": [65] * 64}))
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for k in range(n):
                done = await q.get()
                await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                if k == 0:
                    print(json.dumps({**times.pop(i), "front_write": time.perf_counter()}),
                          file=log)
                if done:
                    break
            del queues[i]
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp

        task, app = asyncio.create_task(tokens()), web.Application()
        app.router.add_post("/v1/completions", completions)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
        task.cancel()
        await runner.cleanup()

    uvloop.run(main())


def wait_port(port: int, procs, timeout: float = 20.0) -> bool:
    """Until the frontend accepts connections (it listens once the worker said hello)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and all(p.is_alive() for p in procs):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


async def idle_client(base_url: str, n: int) -> list[WireResult]:
    """One request at a time, 20 ms apart, one token each."""
    pool, out = WirePool(base_url), []
    await pool.warm(4)
    try:
        for i in range(n):
            body = {"i": i, "prompt": "a" * 63, "max_tokens": 1}
            out.append(await pool.post("/completions", body, WireResult(i), 10))
            await asyncio.sleep(0.02)
    finally:
        pool.close()
    return out


def measure(a) -> tuple[list[WireResult], dict[int, dict]]:
    """Start the skeleton, run the client, return its results and the frontend's log per index."""
    d = tempfile.mkdtemp(prefix="mesh-floor-")
    port, addr_w, addr_b = free_port(), f"ipc://{d}/w", f"ipc://{d}/b"
    n, items = a.requests + IDLE_WARMUP, None
    if not a.idle:
        items = build_workload(WORKLOAD, a.requests, rate=a.rate, arrival="poisson", seed=a.seed)
    span = items[-1].arrival_s if items else n * 0.05
    deadline = time.perf_counter() + span + 120  # the children end themselves by then
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=worker, daemon=True,
                         args=(addr_w, addr_b, a.step_ms / 1e3, a.idle, deadline)),
             ctx.Process(target=frontend, daemon=True,
                         args=(port, addr_w, addr_b, f"{d}/{LOG}", deadline))]
    try:
        for p in procs:
            p.start()
        if not wait_port(port, procs):
            raise SystemExit("the skeleton mesh did not start")
        url = f"http://127.0.0.1:{port}/v1"
        if a.idle:
            res = _run(idle_client(url, n))[IDLE_WARMUP:]
        else:
            res = _run(run_wire(url, items, lambda i, it: {
                "i": i, "prompt": "a" * 63, "max_tokens": it.output_tokens}, timeout=60))
        with open(f"{d}/{LOG}") as fh:
            logged = [json.loads(line) for line in fh if line.endswith("\n")]
        return res, {row["i"]: row for row in logged}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
        shutil.rmtree(d, ignore_errors=True)


def segments(res: list[WireResult], logged: dict[int, dict]) -> dict[str, list[float]]:
    """Per completed request, each segment in ms (with its client index under "index")."""
    out = {"index": []} | {name: [] for name, _, _ in SEGMENTS}
    for r in res:
        if r.error is None and r.ttft is not None and r.index in logged:
            at = {**logged[r.index], "start": r.start, "arrival": r.start + r.ttft,
                  "read": r.start + r.ttft_user}
            out["index"].append(r.index)
            for name, _, points in SEGMENTS:
                p = points.split()
                out[name].append(sum(at[b] - at[a] for a, b in zip(p[::2], p[1::2])) * 1e3)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=768)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rate", type=float, default=18.0, help="Poisson req/s")
    p.add_argument("--step-ms", type=float, default=55.0, help="the worker's step period")
    p.add_argument("--idle", action="store_true", help="one request at a time, no stepping")
    p.add_argument("--json", default=str(ROOT / "bench/results/mesh_floor.json"))
    a = p.parse_args(argv)
    res, logged = measure(a)
    per = segments(res, logged)
    stats = {name: {"p50": pct(v, 50), "mean": float(np.mean(v)) if v else float("nan"),
                    "p90": pct(v, 90), "p99": pct(v, 99), "n": len(v)}
             for name, v in per.items() if name != "index"}
    completed = len(per["index"])
    out = {"config": vars(a) | {"workload": None if a.idle else WORKLOAD,
                                "idle_warmup": IDLE_WARMUP if a.idle else 0},
           "what": __doc__.split("\n\n", 2)[2].strip(),
           "segments": {name: what for name, what, _ in SEGMENTS},
           "completed": completed, "errors": len(res) - completed,
           "first_errors": [r.error for r in res if r.error][:3],
           "kernel_stamped": sum(r.kernel_stamped for r in res if r.error is None),
           "segments_ms": stats, "per_request_ms": per}
    mode = "idle, one at a time" if a.idle else f"{a.rate:g} req/s, step {a.step_ms:g} ms"
    print(f"{'ms':24} {'p50':>8} {'mean':>8} {'p90':>8} {'p99':>8}   "
          f"({completed}/{len(res)} requests, {mode})")
    for name, s in stats.items():
        print(f"{name:24} {s['p50']:8.2f} {s['mean']:8.2f} {s['p90']:8.2f} {s['p99']:8.2f}")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {a.json}")
    return 0 if completed == len(res) else 1


if __name__ == "__main__":
    sys.exit(main())
