"""What the mesh costs: the sim engine driven in-process versus the same engine behind
frontend + scheduler + worker (real processes, HTTP/SSE, ZeroMQ), same workload, same
concurrency. Then the streamed-token throughput of one frontend process.

    python bench/serving_overhead.py [--requests 768] [--seeds 3] [--concurrency 64] [--json PATH]

Writes bench/results/serving_overhead.json with added_ttft_ms_p50/p99 and
frontend_tokens_per_s (the latter with workers that do not sleep, so the frontend is the limit).

What the mesh adds to a request's TTFT is measured per request (the headline,
``added_ttft_ms_*``): the mesh records each request's stages (``--trace-requests``,
common/reqtrace.py, one monotonic clock for all processes), so each wire-client request's added
time is its TTFT minus the time it spent in the engine (worker received -> the step that made
its first token ended), i.e. client -> worker plus worker -> client. ``paired`` holds the same
figures with a per-stage breakdown (medians).

The difference of the two TTFT distributions (mesh minus in-process, pooled over ``--seeds``
arrival schedules, the same ones on both sides) is kept as ``distribution_difference``. It is a
poor estimator of the same quantity: each distribution is ~50 ms wide (a request waits for the
running step to end, then for its prefill step), and the engine's state evolves differently
once arrivals shift by a millisecond, so its per-seed p50 swings by +-1-2 ms (2.5-5.0 ms in
runs whose paired p50 stayed at 1.9-2.4 ms); the per-request engine times of the two sides are
uncorrelated (none within 5 ms of each other), and their means differ by -0.8 to +2 ms from seed
to seed with no consistent sign.

Where the client takes a token's time. The in-process side takes it when the engine step ends.
The mesh side is measured twice per seed, on the same cluster: with ``wire_client.py``, which
takes the time the kernel received the bytes on its socket (the headline: what the mesh adds;
the time its own event loop got to them is kept as ``wire_user``), and with the
aiohttp load generator of serving.py, which takes it after its own event loop has parsed the
chunk (with 64 streams a new request's first chunk waits behind ~63 others of the same step;
kept as ``aiohttp_client`` so the two can be compared).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from serving import BenchConfig, make_prompt, run_benchmark  # noqa: E402
from wire_client import run_wire  # noqa: E402

from llumnix_zmq.clock import SystemClock  # noqa: E402
from llumnix_zmq.common.reqtrace import read_traces  # noqa: E402
from llumnix_zmq.engine.base import EngineRequest  # noqa: E402
from llumnix_zmq.engine.sim import SimConfig, SimEngine  # noqa: E402
from llumnix_zmq.launch.local import ClusterSpec, LocalCluster  # noqa: E402
from llumnix_zmq.protocol.messages import FinishReason, SamplingParams  # noqa: E402
from llumnix_zmq.worker.pacing import StepPacer  # noqa: E402
from llumnix_zmq.workload import WorkItem, build_workload  # noqa: E402


def pct(values, q) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def dist(values) -> dict:
    return {"p50": pct(values, 50), "p99": pct(values, 99),
            "mean": float(np.mean(values)) if values else float("nan"), "n": len(values)}


def client_view(what: str, ttfts: list[float], base: list[float]) -> dict:
    """The same mesh runs seen through another client's timestamps, against the in-process
    TTFTs ``base``."""
    return {"what": what, "mesh_ttft_ms": dist(ttfts),
            "added_ttft_ms_p50": pct(ttfts, 50) - pct(base, 50),
            "added_ttft_ms_p99": pct(ttfts, 99) - pct(base, 99)}


async def inprocess(items: list[WorkItem], profile: str, time_scale: float) -> dict:
    """The same engine, the same real-time stepping as the worker, the same arrival schedule,
    clients in-process (no HTTP, no ZeroMQ, no tokenizer)."""
    engine = SimEngine(SimConfig(profile=profile))
    waiters: dict[str, asyncio.Future] = {}
    first: dict[str, float] = {}
    work = asyncio.Event()
    ttfts, e2es = [], []

    async def engine_loop():  # paced like the worker's loop (the same StepPacer)
        pacer = StepPacer(SystemClock(), time_scale)
        while True:
            if not engine.has_work():
                pacer.idle()
                work.clear()
                await work.wait()
                continue
            pacer.begin()
            res = engine.step()
            await asyncio.sleep(pacer.end(res.duration_s))
            now = time.monotonic()
            for d in res.deltas:
                if d.token_ids and d.request_id not in first:
                    first[d.request_id] = now
                if d.finish_reason != FinishReason.NONE:
                    waiters.pop(d.request_id).set_result(now)

    async def client(i: int, item: WorkItem, start: float):
        await asyncio.sleep(max(0.0, start + item.arrival_s - time.monotonic()))
        rid = f"r{i}"
        fut = asyncio.get_running_loop().create_future()
        waiters[rid] = fut
        t0 = time.monotonic()
        engine.add_request(EngineRequest(rid, [65] * item.prompt_tokens,
                                         SamplingParams(max_tokens=item.output_tokens,
                                                        ignore_eos=True)))
        work.set()
        end = await fut
        ttfts.append(first.pop(rid) - t0)
        e2es.append(end - t0)

    loop_task = asyncio.create_task(engine_loop())
    t0 = time.monotonic()
    await asyncio.gather(*(client(i, item, t0) for i, item in enumerate(items)))
    wall = time.monotonic() - t0
    loop_task.cancel()
    return {"ttft_ms": {"p50": pct(ttfts, 50) * 1e3, "p99": pct(ttfts, 99) * 1e3,
                        "mean": float(np.mean(ttfts)) * 1e3},
            "ttfts_ms": [t * 1e3 for t in ttfts],
            "mean_concurrency": sum(e2es) / wall,
            "e2e_ms": {"p50": pct(e2es, 50) * 1e3, "p99": pct(e2es, 99) * 1e3},
            "wall_s": wall, "completed": len(ttfts)}


def _hop_sender(address: str, n: int, gap_s: float) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.connect(address)
    time.sleep(0.3)
    for _ in range(n):
        sock.send(repr(time.monotonic()).encode())
        time.sleep(gap_s)
    sock.send(b"end")
    sock.close(linger=1000)
    ctx.term()


async def _hop_receiver(address: str) -> list[float]:
    import zmq
    import zmq.asyncio

    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.PULL)
    sock.bind(address)
    lat = []
    try:
        while True:
            msg = await asyncio.wait_for(sock.recv(), 10)
            if msg == b"end":
                return lat
            lat.append((time.monotonic() - float(msg)) * 1e3)
    finally:
        sock.close(linger=0)
        ctx.term()


def hop_floor(n: int = 300) -> dict:
    """One ZeroMQ hop between two idle processes (PUSH -> asyncio PULL on uvloop, ipc, 20 ms
    apart): the floor of each process-to-process hop the mesh's request path takes (client ->
    frontend -> worker -> frontend -> client: four; the scheduler round trip is off the path
    with dispatch tickets). On a VM most of it is thread wake-up: libzmq's I/O thread on each
    side plus the receiving event loop."""
    import multiprocessing as mp
    import tempfile

    address = f"ipc://{tempfile.mkdtemp()}/hop"
    proc = mp.get_context("spawn").Process(target=_hop_sender, args=(address, n, 0.02))
    proc.start()
    try:
        lat = _run(_hop_receiver(address))
    finally:
        proc.join(10)
    return {"p50": pct(lat, 50), "p99": pct(lat, 99), "n": len(lat)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def through_mesh(items, profile, time_scale, concurrency, instances, log_dir,
                 wire: bool = False) -> dict:
    """``concurrency`` None: open loop on the items' arrival times. ``wire``: first a run with
    wire_client.py (its per-request TTFTs under ``wire``), then the aiohttp one."""
    trace_dir = tempfile.mkdtemp(prefix="llumnix-trace-")
    traces = [f"{trace_dir}/frontend", f"{trace_dir}/worker"]
    spec = ClusterSpec(instances=instances, port=free_port(), profile=profile,
                       time_scale=time_scale, log_level="WARNING", log_dir=log_dir,
                       frontend_args=["--trace-requests", traces[0]] if wire else [],
                       worker_args=["--trace-requests", traces[1]] if wire else [])
    with LocalCluster(spec) as cluster:
        if not cluster.wait_ready(60):
            raise SystemExit("cluster did not start")
        wire_res = _run(_wire_run(cluster.base_url, items)) if wire else None
        frontend = cluster.child("frontend").proc.pid
        cpu0 = _cpu_seconds(frontend)
        cfg = BenchConfig(base_url=cluster.base_url + "/v1", model="sim", items=items,
                          requests=len(items), per_request=True,
                          concurrency=concurrency, progress=False, max_seconds=600)
        t0 = time.monotonic()
        res = _run(run_benchmark(cfg))
        res["frontend_cpu_fraction"] = (_cpu_seconds(frontend) - cpu0) / (time.monotonic() - t0)
        res["frontend_ttft_ms_mean"] = _frontend_ttft_mean(cluster.base_url)
        res["dispatch_tickets"] = _tickets(cluster.base_url)
    if wire_res is not None:  # the cluster has stopped: its trace files are complete
        wire_res["paired"] = paired(wire_res.pop("results"), read_traces(
            [p for p in traces if os.path.exists(p)]))
        res["wire"] = wire_res
    shutil.rmtree(trace_dir, ignore_errors=True)
    return res


# what the mesh adds to one request, and its parts: (name, from, to); "start" and "arrival" are
# the wire client's (request sent; first token's bytes in its socket, kernel stamp)
PAIRED_STAGES = (("client -> frontend handler", "start", "accepted"),
                 ("frontend: parse, dispatch, send", "accepted", "submitted"),
                 ("ZeroMQ -> worker, decode", "submitted", "received"),
                 ("in the engine (not added)", "received", "first_emit"),
                 ("worker emit -> frontend applied", "first_emit", "first_token"),
                 ("frontend: SSE chunk written", "first_token", "first_write"),
                 ("-> client socket (kernel stamp)", "first_write", "arrival"))


def paired(results, traces: dict) -> dict:
    """Per wire-client request: TTFT minus its time in the engine, from the stage traces."""
    added, stages = [], {name: [] for name, _, _ in PAIRED_STAGES}
    for r in results:
        ev = traces.get(r.response_id)
        if r.ttft is None or not ev or "received" not in ev or "first_emit" not in ev:
            continue
        ev = {**ev, "start": r.start, "arrival": r.start + r.ttft}
        added.append((r.ttft - (ev["first_emit"] - ev["received"])) * 1e3)
        for name, a, b in PAIRED_STAGES:
            if a in ev and b in ev:
                stages[name].append((ev[b] - ev[a]) * 1e3)
    return {"added_ttft_ms": added, "stages_ms": stages}


def paired_summary(added: list[float], stages: dict) -> dict:
    return {"n": len(added), "added_ttft_ms_p50": pct(added, 50),
            "added_ttft_ms_p99": pct(added, 99),
            "added_ttft_ms_mean": float(np.mean(added)) if added else float("nan"),
            "stages_ms_p50": {k: pct(v, 50) for k, v in stages.items()}}


async def _wire_run(base_url: str, items) -> dict:
    """The items through wire_client.py: TTFT as the bytes reach the client's socket."""
    cfg = BenchConfig(base_url=base_url + "/v1", model="sim")

    def body(i, item):
        prompt = make_prompt(item.prompt_tokens, cfg.prompt_mode,
                             np.random.default_rng([cfg.seed, i]))
        return {"model": "sim", "prompt": prompt, "max_tokens": item.output_tokens,
                "stream": True, "temperature": 0.0, "ignore_eos": True}

    res = await run_wire(base_url + "/v1", items, body)
    ok = [r for r in res if r.error is None and r.ttft is not None]
    return {"results": ok, "ttfts_ms": [r.ttft * 1e3 for r in ok],
            "ttfts_user_ms": [r.ttft_user * 1e3 for r in ok],
            "kernel_stamped": sum(r.kernel_stamped for r in ok), "completed": len(ok),
            "errors": len(res) - len(ok),
            "first_errors": [r.error for r in res if r.error][:3]}


def _run(coro):
    """uvloop for the client too: the load generator shares these 2 cores with the mesh."""
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def _metrics_text(base_url: str) -> str:
    import urllib.request

    return urllib.request.urlopen(base_url + "/metrics", timeout=5).read().decode()


def _tickets(base_url: str) -> dict:
    """How many NORMAL requests found a fresh dispatch ticket (frontend/tickets.py)."""
    import re

    found = re.findall(r'llumnix_frontend_dispatch_tickets_total{outcome="(\w+)"} (\S+)',
                       _metrics_text(base_url))
    return {k: int(float(v)) for k, v in found}


def _frontend_ttft_mean(base_url: str) -> float:
    """Mean TTFT as the frontend measured it (request accepted → first token in), exact from
    the Prometheus histogram's sum and count."""
    import re

    text = _metrics_text(base_url)
    total = float(re.search(r"llumnix_frontend_ttft_seconds_sum (\S+)", text).group(1))
    count = float(re.search(r"llumnix_frontend_ttft_seconds_count (\S+)", text).group(1))
    return total / count * 1e3 if count else float("nan")


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=768)
    p.add_argument("--seeds", type=int, default=3, help="arrival schedules per side")
    p.add_argument("--rate", type=float, default=18.0,
                   help="Poisson req/s; ~64 concurrent streams with the default lengths")
    p.add_argument("--concurrency", type=int, default=64, help="streams of the throughput run")
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--output", type=int, default=64)
    p.add_argument("--profile", default="llama-7b-a10")
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--throughput-output", type=int, default=512)
    p.add_argument("--json", default=str(ROOT / "bench/results/serving_overhead.json"))
    a = p.parse_args(argv)
    log_dir = str(ROOT / "bench/results/.logs")
    seeds = list(range(1, a.seeds + 1))
    base_ttft, mesh_ttft, user_ttft, http_ttft, per_seed = [], [], [], [], []
    pair_added, pair_stages = [], {name: [] for name, _, _ in PAIRED_STAGES}
    for seed in seeds:
        items = build_workload(f"fixed:{a.prompt}-{a.output}", a.requests, rate=a.rate,
                               arrival="poisson", seed=seed)
        base = _run(inprocess(items, a.profile, a.time_scale))
        # the same prompt length on both sides: the byte tokenizer adds a BOS to N letters
        letters = [dataclasses.replace(i, prompt_tokens=i.prompt_tokens - 1) for i in items]
        mesh = through_mesh(letters, a.profile, a.time_scale, None, 1, log_dir, wire=True)
        b_t = base.pop("ttfts_ms")
        wire = mesh.pop("wire")
        m_t = wire.pop("ttfts_ms")
        u_t = wire.pop("ttfts_user_ms")
        pair = wire.pop("paired")
        pair_added += pair["added_ttft_ms"]
        for k, v in pair["stages_ms"].items():
            pair_stages[k] += v
        wire["paired"] = paired_summary(pair["added_ttft_ms"], pair["stages_ms"])
        h_t = [r["ttft"] * 1e3 for r in mesh.pop("per_request") if r.get("ttft") is not None]
        base_ttft += b_t
        mesh_ttft += m_t
        user_ttft += u_t
        http_ttft += h_t
        row = {"seed": seed, "inprocess": base, "wire": wire,
               "mesh": {k: mesh[k] for k in ("ttft_ms", "e2e_ms", "itl_ms", "completed",
                                             "errors", "frontend_cpu_fraction",
                                             "frontend_ttft_ms_mean", "dispatch_tickets")},
               "added_ttft_ms_p50": wire["paired"]["added_ttft_ms_p50"],
               "added_ttft_ms_p99": wire["paired"]["added_ttft_ms_p99"],
               "added_ttft_ms_mean": wire["paired"]["added_ttft_ms_mean"],
               "distribution_added_ttft_ms_p50": pct(m_t, 50) - pct(b_t, 50),
               "distribution_added_ttft_ms_p99": pct(m_t, 99) - pct(b_t, 99),
               "distribution_added_ttft_ms_mean": float(np.mean(m_t) - np.mean(b_t)),
               "wire_user_added_ttft_ms_p50": pct(u_t, 50) - pct(b_t, 50),
               "aiohttp_client_added_ttft_ms_p50": pct(h_t, 50) - pct(b_t, 50),
               "aiohttp_client_added_ttft_ms_p99": pct(h_t, 99) - pct(b_t, 99),
               "added_ttft_ms_mean_at_frontend": mesh["frontend_ttft_ms_mean"]
               - base["ttft_ms"]["mean"],
               "added_e2e_ms_p50": mesh["e2e_ms"]["p50"] - base["e2e_ms"]["p50"]}
        per_seed.append(row)
        print(f"seed {seed}: added TTFT p50 {row['added_ttft_ms_p50']:.2f} ms, p99 "
              f"{row['added_ttft_ms_p99']:.2f} ms, mean {row['added_ttft_ms_mean']:.2f} ms "
              f"(n {wire['paired']['n']}; difference of distributions: p50 "
              f"{row['distribution_added_ttft_ms_p50']:.2f}, p99 "
              f"{row['distribution_added_ttft_ms_p99']:.2f}; "
              f"read by the client: p50 {row['wire_user_added_ttft_ms_p50']:.2f}; aiohttp client: p50 {row['aiohttp_client_added_ttft_ms_p50']:.2f}, p99 "
              f"{row['aiohttp_client_added_ttft_ms_p99']:.2f}; wire errors {wire['errors']}; "
              f"tickets {mesh['dispatch_tickets']})", flush=True)
    tp_items = [WorkItem(0.0, 16, a.throughput_output) for _ in range(a.concurrency * 2)]
    tp = through_mesh(tp_items, a.profile, 0.0, a.concurrency, 2, log_dir)
    floor = hop_floor()

    pair = paired_summary(pair_added, pair_stages)
    out = {
        "config": vars(a),
        "method": "per request: TTFT (the first token's bytes reach the client's socket, the "
                  "kernel's receive stamp, SO_TIMESTAMPNS, in wire_client.py) minus the "
                  "request's own time in the engine (worker received -> the step that made its "
                  "first token ended), from the services' --trace-requests stage times; pooled "
                  "over the seeds (per_seed holds each run)",
        "added_ttft_ms_p50": pair["added_ttft_ms_p50"],
        "added_ttft_ms_p99": pair["added_ttft_ms_p99"],
        "added_ttft_ms_mean": pair["added_ttft_ms_mean"],
        "inprocess_ttft_ms": dist(base_ttft),
        "mesh_ttft_ms": dist(mesh_ttft),
        "distribution_difference": {
            "what": "mesh TTFT percentiles minus in-process TTFT percentiles, pooled over the "
                    "same arrival schedules (a noisy estimator: see the module's docstring)",
            "added_ttft_ms_p50": pct(mesh_ttft, 50) - pct(base_ttft, 50),
            "added_ttft_ms_p99": pct(mesh_ttft, 99) - pct(base_ttft, 99),
            "added_ttft_ms_mean": float(np.mean(mesh_ttft) - np.mean(base_ttft))},
        "paired": {
            "what": "per wire-client request, TTFT minus its time in the engine (worker "
                    "received -> the step that made its first token ended), from the mesh's "
                    "--trace-requests stage times (one monotonic clock); pooled over the seeds",
            **pair},
        "wire_user": client_view(
            "the same wire_client runs, time taken when the client's event loop read the "
            "bytes (not the kernel's receive stamp)", user_ttft, base_ttft),
        "aiohttp_client": client_view(
            "the same mesh runs measured by serving.py's aiohttp load generator (time taken "
            "after its event loop parsed the chunk)", http_ttft, base_ttft),
        "added_ttft_ms_mean_at_frontend": float(np.mean(
            [r["added_ttft_ms_mean_at_frontend"] for r in per_seed])),
        "per_seed": per_seed,
        "zmq_hop_floor_ms": floor,
        "frontend_tokens_per_s": tp["output_token_throughput"],
        "throughput_run": {k: tp[k] for k in ("completed", "errors", "output_tokens",
                                              "output_token_throughput", "ttft_ms", "itl_ms",
                                              "frontend_cpu_fraction")},
        "targets": {"added_ttft_ms_p50": 2.0, "added_ttft_ms_p99": 10.0,
                    "frontend_tokens_per_s": 10000},
    }
    pr = out["paired"]
    print(f"added TTFT per request (TTFT - its time in the engine; {len(seeds)} seeds x "
          f"{a.requests} requests, n {pr['n']}): p50 {pr['added_ttft_ms_p50']:.2f} ms, p99 "
          f"{pr['added_ttft_ms_p99']:.2f} ms, mean {pr['added_ttft_ms_mean']:.2f} ms")
    for name, v in pr["stages_ms_p50"].items():
        print(f"    {name:34} p50 {v:7.3f} ms")
    print(f"difference of distributions:\n{'TTFT (ms)':16} {'in-process':>12} {'mesh':>12} "
          f"{'added':>10}")
    for q in ("p50", "p99", "mean"):
        b, m = out["inprocess_ttft_ms"][q], out["mesh_ttft_ms"][q]
        print(f"{q:16} {b:12.2f} {m:12.2f} {m - b:10.2f}")
    u = out["wire_user"]
    print(f"{'  read by client':16} {'':12} {u['mesh_ttft_ms']['p50']:12.2f} "
          f"{u['added_ttft_ms_p50']:10.2f}   (p50; p99 added {u['added_ttft_ms_p99']:.2f})")
    h = out["aiohttp_client"]
    print(f"{'  aiohttp client':16} {'':12} {h['mesh_ttft_ms']['p50']:12.2f} "
          f"{h['added_ttft_ms_p50']:10.2f}   (p50; p99 added {h['added_ttft_ms_p99']:.2f})")
    print(f"added TTFT mean at the frontend (accepted -> first token in): "
          f"{out['added_ttft_ms_mean_at_frontend']:.2f} ms")
    print(f"one idle process-to-process ZeroMQ hop (the floor; the request path takes four): "
          f"p50 {floor['p50']:.2f} ms, p99 {floor['p99']:.2f} ms")
    print(f"frontend streamed tokens/s (2 non-sleeping workers, {a.concurrency} streams): "
          f"{tp['output_token_throughput']:.0f}  (frontend CPU {tp['frontend_cpu_fraction']:.0%})")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
