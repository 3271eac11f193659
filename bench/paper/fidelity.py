"""Fidelity: the same workload through the real mesh (scheduler + frontend + sim-engine workers,
real time, ZeroMQ, HTTP/SSE) and through the discrete-event simulator; compare P50/P99 of TTFT
and end-to-end latency (they should agree within 15%).

    python bench/paper/fidelity.py                      # every scenario in SCENARIOS
    python bench/paper/fidelity.py --scenario custom --trace zipf:128-128 --rate 4 ...

Same items on both sides: ``build_workload`` once (prompts clipped to >= 2 tokens, outputs to
<= --max-output to bound the real run). The load generator sends a prompt of N tokens as N-1
letters (the byte tokenizer adds BOS). With ``--time-scale s`` the workers sleep s × the modelled
step time and the arrivals are scaled by s as well; real latencies are divided by s before the
comparison (client overheads are then magnified by 1/s, so s = 1 is the honest setting).
Both sides run the llumnix policy with migration (--no-migration to turn it off; --policy
infaas++ for a baseline). The mesh's sim engines migrate 64 bytes per KV block, so the
simulator's migration bandwidth is set high to match (--sim-bandwidth-gbps).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))  # bench/ for serving.py
from serving import BenchConfig, run_benchmark  # noqa: E402

from llumnix_zmq.engine.sim import get_profile  # noqa: E402
from llumnix_zmq.launch.local import ClusterSpec, LocalCluster  # noqa: E402
from llumnix_zmq.sim import SimulationConfig  # noqa: E402
from llumnix_zmq.workload import WorkItem, build_workload, workload_summary  # noqa: E402

RESULTS = HERE.parents[1] / "results"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pcts(values) -> dict:
    a = np.asarray([v for v in values if v is not None], dtype=float)
    return {"n": int(a.size), "mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
            "p99": float(np.percentile(a, 99))}


def make_items(a) -> list[WorkItem]:
    items = build_workload(a.trace, a.requests, a.rate, "poisson", seed=a.seed,
                           max_prompt=2047, max_output=a.max_output)
    return [WorkItem(w.arrival_s, max(2, w.prompt_tokens), w.output_tokens, w.priority)
            for w in items]


def run_sim(a, items, frontend_latency_s: float = 0.0, step_overhead_ms: float = 0.0) -> dict:
    from llumnix_zmq.sim import Simulation

    # the mesh's sim engines migrate 4-byte token ids per KV slot (64 B per block), so the copy
    # time is negligible there: model the same (bandwidth --sim-bandwidth-gbps, 1 ms handshakes)
    cfg = SimulationConfig(instances=a.instances, profile=a.profile, policy=a.policy,
                           migration=a.migration, requests=len(items), seed=a.seed,
                           progress=False, frontend_latency_ms=frontend_latency_s * 1000.0,
                           bandwidth_gbps=a.sim_bandwidth_gbps, num_blocks=a.num_blocks or None,
                           step_overhead_ms=step_overhead_ms)
    t0 = time.perf_counter()
    sim = Simulation(cfg, items)
    sim.run()
    wall = time.perf_counter() - t0
    arr = sim.metrics.arrays()
    return {"ttft": _pcts(arr["ttft"].tolist()), "e2e": _pcts(arr["e2e"].tolist()),
            "wall_seconds": wall, "makespan_s": sim.end_time,
            "frontend_latency_ms": cfg.frontend_latency_ms,
            "step_overhead_ms": cfg.step_overhead_ms,
            "migrations": sim.counts["migrations_committed"],
            "preemptions": sum(i.engine.num_preemptions for i in sim.instances.values())}


def _migration_orders(port: int) -> dict:
    """The scheduler's migration orders by outcome, from its Prometheus endpoint."""
    import re
    import urllib.request

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    out = {}
    for m in re.finditer(r'^llumnix_scheduler_migration_orders_total\{[^}]*="(\w+)"\} (\S+)',
                         text, re.M):
        out[m.group(1)] = float(m.group(2))
    return out


CAL_TOKENS = 64


def _sequential(base_url: str, n: int, output_tokens: int) -> list[dict]:
    items = [WorkItem(0.0, 1, output_tokens) for _ in range(n)]  # 1 letter + BOS = 2 tokens
    res = asyncio.run(run_benchmark(BenchConfig(
        base_url=base_url, model="sim", items=items, requests=n, concurrency=1,
        prompt_mode="bytes", progress=False, per_request=True)))
    return res["per_request"]


def calibrate(base_url: str, profile: str, n: int = 30) -> tuple[float, float]:
    """On the idle mesh, one request at a time: (fixed per-request overhead, overhead per engine
    step). The first is the median TTFT of 2-token, 1-output requests (HTTP, tokenizer, dispatch
    query, token path; it holds their modelled 2-token prefill step); the second spreads what a
    64-output request takes beyond that and its modelled decode steps over its 63 steps."""
    ttft1 = float(np.median([r["ttft"] for r in _sequential(base_url, n, 1)]))
    e2e = float(np.median([r["e2e"] for r in _sequential(base_url, n // 3, CAL_TOKENS)]))
    prof = get_profile(profile)
    decode_s = sum(prof.step_s(0, 1, 2 + k) for k in range(1, CAL_TOKENS))
    return ttft1, max(0.0, (e2e - ttft1 - decode_s) / (CAL_TOKENS - 1))


def run_real(a, items) -> dict:
    s = a.time_scale
    mport = _port()
    spec = ClusterSpec(engine="sim", model="sim", instances=a.instances, port=_port(),
                       profile=a.profile, time_scale=s, dispatch_policy=a.policy,
                       enable_migration=a.migration, log_level="WARNING", transport="ipc",
                       scheduler_args=["--metrics-port", str(mport)],
                       worker_args=[f"--num-blocks={a.num_blocks}"] if a.num_blocks else [])
    bench_items = [WorkItem(w.arrival_s * s, w.prompt_tokens - 1, w.output_tokens, w.priority)
                   for w in items]
    with LocalCluster(spec) as cluster:
        if not cluster.wait_ready(120):
            raise RuntimeError("mesh did not become ready")
        time.sleep(1.0)  # let every worker report once
        overhead, step_overhead = calibrate(cluster.base_url + "/v1", a.profile)
        time.sleep(1.0)
        t0 = time.perf_counter()
        res = asyncio.run(run_benchmark(BenchConfig(
            base_url=cluster.base_url + "/v1", model="sim", items=bench_items,
            requests=len(bench_items), prompt_mode="bytes", progress=False, per_request=True,
            max_seconds=3600, request_timeout=3600, seed=a.seed)))
        wall = time.perf_counter() - t0
        orders = _migration_orders(mport)
    per = res["per_request"]
    bad = [r for r in per if r["error"] or r["e2e"] is None]
    if bad:
        raise RuntimeError(f"{len(bad)} requests failed, e.g. {bad[0]['error']}")
    short = [r["index"] for r in per if r["tokens"] != items[r["index"]].output_tokens]
    return {"ttft": _pcts([r["ttft"] / s for r in per]), "e2e": _pcts([r["e2e"] / s for r in per]),
            "wall_seconds": wall, "requests_with_wrong_token_count": len(short),
            "overhead_s": overhead, "step_overhead_s": step_overhead,
            "migration_orders": orders}


def compare(sim: dict, real: dict) -> dict:
    out = {}
    for metric in ("ttft", "e2e"):
        for stat in ("p50", "p99"):
            sv, rv = sim[metric][stat], real[metric][stat]
            out[f"{metric}_{stat}"] = {"sim": sv, "real": rv, "rel_diff": (rv - sv) / sv}
    return out


def markdown_one(res: dict) -> str:
    a = res["args"]
    rows = [f"| {k.replace('_', ' ').upper()} | {v['sim'] * 1000:.1f} | {v['real'] * 1000:.1f} | "
            f"{v['rel_diff'] * 100:+.1f}% |" for k, v in res["comparison"].items()]
    ok = all(abs(v["rel_diff"]) <= 0.15 for v in res["comparison"].values())
    return "\n".join([
        f"## {res['name']}", "",
        f"{a['requests']} requests, {a['trace']} (outputs <= {a['max_output']}), Poisson "
        f"{a['rate']} req/s, {a['instances']} instances of {a['profile']} "
        f"({a['num_blocks'] or 'default'} KV blocks each), dispatch "
        f"{a['policy']}, migration {'on' if a['migration'] else 'off'}, seed {a['seed']}, "
        f"worker time_scale {a['time_scale']}. Simulator: {res['sim']['migrations']} migrations, "
        f"{res['sim']['preemptions']} preemptions; mesh: scheduler migration orders "
        f"{res['real'].get('migration_orders') or 'none'}.",
        f"Real run: {res['real']['wall_seconds']:.0f} s wall; simulator "
        f"{res['sim']['wall_seconds']:.1f} s wall.",
        "", "| metric | simulator (ms) | real mesh (ms) | real vs sim |", "|---|---|---|---|",
        *rows, "",
        f"Within 15% on every row: **{'yes' if ok else 'no'}** (simulator with "
        f"--frontend-latency-ms {res['sim']['frontend_latency_ms']:.2f} --step-overhead-ms "
        f"{res['sim'].get('step_overhead_ms', 0.0):.2f}, both measured on the idle mesh). "
        "With an ideal mesh (0 ms, 0 ms):", "",
        "| metric | simulator, ideal mesh | real mesh | real vs sim |", "|---|---|---|---|",
        *[f"| {k.replace('_', ' ').upper()} | {v['sim'] * 1000:.1f} | {v['real'] * 1000:.1f} | "
          f"{v['rel_diff'] * 100:+.1f}% |" for k, v in res["comparison_ideal_frontend"].items()],
        "", "Sensitivity of the simulator's TTFT to --step-overhead-ms (frontend latency as "
        "measured): "
        + "; ".join(f"+{k:g} ms/step: P50 {v['p50'] * 1000:.1f} ms, P99 {v['p99'] * 1000:.1f} ms"
                    for k, v in res["sim_ttft_step_overhead"].items()) + ".", ""])


def markdown(results: list[dict]) -> str:
    return "\n".join([
        "# Fidelity: simulator vs the real mesh (sim engines, real time)", "",
        "Real runs: LocalCluster (scheduler + frontend + workers with SimEngines, ipc ZeroMQ, "
        "real time) driven by bench/serving.py's run_benchmark over HTTP/SSE. The simulator gets "
        "the same items and two overheads measured on the idle mesh just before each run: "
        "--frontend-latency-ms, the fixed per-request cost (HTTP, tokenizer, dispatch query, "
        "token path: the median TTFT of 30 one-token requests sent one at a time), and "
        "--step-overhead-ms, the worker loop's cost per engine step (what 10 sequential "
        "64-token requests take beyond that and their modelled steps, per step). The "
        "machine's 2 cores were shared with other jobs during the runs.", "",
        *[markdown_one(r) for r in results],
        "Where memory is tight (200 blocks per instance) the TTFT P99 (the 5th-worst of 500 "
        "requests) is set by a few requests queued behind a large head-of-line prompt, and it "
        "is unstable on both sides: the sensitivity lines above move it several-fold with 1–2 "
        "ms more per step, and on the previous A10 profile the simulator alone gave TTFT P99 "
        "1.0, 4.0, 0.50, 0.65, 9.4 and 10.3 s over arrival seeds 1–6 of the 3.0 req/s scenario "
        "(P50 42–49 ms); repeated mesh runs of the same items differ as much. The 2.5 req/s "
        "scenario was added to find a pressured point whose tail is stable (on the previous "
        "profile the simulator alone gave 0.50–0.55 s for seeds 1–4 with 0 preemptions); it is "
        "not: here both sides preempt and the P99s differ several-fold. Wherever memory gets "
        "tight, the TTFT tail turns on sub-millisecond differences (which request finds the "
        "blocks first), so a single run's P99 there cannot be expected to agree within 15%; "
        "the P50s and the E2E P99 are the stable comparisons there, and the light-load "
        "scenario, which has none of that, agrees within 15% on every row (see its table).", "",
        "Regenerate: `python bench/paper/fidelity.py` (every scenario; see its docstring); "
        "`--report` rebuilds this file from the JSON.", ""])


# name -> overrides of the command-line defaults
SCENARIOS = {
    "light load, no memory pressure": {"trace": "zipf:128-128", "rate": 4.0, "num_blocks": 0},
    "memory pressure: migrations": {"trace": "zipf:256-256", "rate": 2.5, "num_blocks": 200},
    "memory pressure: migrations and preemptions": {"trace": "zipf:256-256", "rate": 3.0,
                                                    "num_blocks": 200},
}


def run_scenario(name: str, a) -> dict:
    items = make_items(a)
    real = run_real(a, items)
    print("real:", json.dumps(real), flush=True)
    # the measured fixed overhead, minus the 2-token prefill the calibration requests paid
    lat = max(0.0, real["overhead_s"] - get_profile(a.profile).step_s(2, 0, 0))
    step_ms = real["step_overhead_s"] * 1000.0
    sim = run_sim(a, items, lat, step_ms)
    ideal = run_sim(a, items, 0.0)
    # sensitivity of TTFT to the per-step overhead
    slow = {ms: run_sim(a, items, lat, ms)["ttft"] for ms in (0.0, 1.0, 2.0, 4.0)}
    print("sim:", json.dumps(sim), flush=True)
    return {"name": name, "args": vars(a), "workload": workload_summary(items), "sim": sim,
            "real": real, "comparison": compare(sim, real), "sim_ideal_frontend": ideal,
            "comparison_ideal_frontend": compare(ideal, real), "sim_ttft_step_overhead": slow}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--instances", type=int, default=4)
    p.add_argument("--trace", default="zipf:128-128")
    p.add_argument("--rate", type=float, default=4.0)
    p.add_argument("--max-output", type=int, default=1024)
    p.add_argument("--profile", default="llama-7b-a10")
    p.add_argument("--policy", default="llumnix")
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--num-blocks", type=int, default=0,
                   help="KV blocks per instance on both sides (0: the profile's 862); fewer "
                        "blocks put the cluster under memory pressure (migrations, preemptions)")
    p.add_argument("--migration", action=argparse.BooleanOptionalAction, default=True,
                   help="llumnix migration on both sides (default on)")
    p.add_argument("--sim-bandwidth-gbps", type=float, default=1e4,
                   help="simulator's migration bandwidth (the mesh's sim engines send 64 B/block)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS / "fidelity"))
    p.add_argument("--scenario", choices=["all", "custom"], default="all",
                   help="all: every SCENARIOS entry (their settings override the flags); "
                        "custom: just the flags")
    p.add_argument("--report", action="store_true", help="only rebuild the .md from the .json")
    a = p.parse_args(argv)
    if a.report:
        results = json.loads(Path(a.out + ".json").read_text())["scenarios"]
        for r in results:  # JSON turned the overhead keys into strings
            r["sim_ttft_step_overhead"] = {float(k): v for k, v in
                                           r["sim_ttft_step_overhead"].items()}
        Path(a.out + ".md").write_text(markdown(results))
        return 0
    if a.scenario == "custom":
        runs = [("custom", a)]
    else:
        runs = [(name, argparse.Namespace(**{**vars(a), **over}))
                for name, over in SCENARIOS.items()]
    results = [run_scenario(name, args) for name, args in runs]
    Path(a.out + ".json").write_text(json.dumps({"scenarios": results}, indent=1) + "\n")
    md = markdown(results)
    Path(a.out + ".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
