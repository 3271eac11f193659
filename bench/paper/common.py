"""Shared helpers of the paper-reproduction scripts: run simulation points in parallel worker
processes, keep the results in one JSON per figure (resumable: points already there are
skipped), and format tables.

A point is ``{"key": str, **SimulationConfig kwargs}``; its record is the config plus the metrics
the figures need (seconds) and the run's wall time.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"
KEEP = ("ttft", "ttft_long_prompts", "decode_per_token", "e2e", "preemption_loss",
        "instance_seconds", "avg_instances",
        "migrations", "migrations_started", "migration_reasons", "migration_downtime",
        "preemptions", "fragmentation", "makespan_s", "scale_out", "scale_in")


def run_point(point: dict) -> dict:
    from llumnix_zmq.sim import SimulationConfig, run_simulation

    kw = {k: v for k, v in point.items() if k not in ("key", "keep_timeline")}
    res = run_simulation(SimulationConfig(progress=False, **kw))
    rec = {"key": point["key"], "config": kw, "workload": res["workload"],
           "metrics": {k: res["metrics"][k] for k in KEEP if k in res["metrics"]},
           "wall_seconds": res["wall_seconds"], "sim_seconds": res["sim_seconds"]}
    if "by_priority" in res:
        rec["by_priority"] = res["by_priority"]
    if point.get("keep_timeline"):
        rec["instance_timeline"] = res["instance_timeline"]
    return rec


def run_points(points: list[dict], out: Path, workers: int | None = None) -> dict:
    """Run every point not yet in ``out`` (a JSON dict key -> record); save after each one."""
    done = json.loads(out.read_text()) if out.exists() else {}
    todo = [p for p in points if p["key"] not in done]
    workers = workers or int(os.environ.get("SIM_WORKERS", "2"))
    print(f"{out.name}: {len(points) - len(todo)} done, {len(todo)} to run on {workers} workers",
          file=sys.stderr, flush=True)
    t0 = time.time()
    with ProcessPoolExecutor(workers) as pool:
        futures = {pool.submit(run_point, p): p["key"] for p in todo}
        for i, fut in enumerate(as_completed(futures), 1):
            rec = fut.result()
            done[rec["key"]] = rec
            out.write_text(json.dumps(done, indent=1) + "\n")
            print(f"[{i}/{len(todo)} {time.time() - t0:6.0f}s] {rec['key']}: wall "
                  f"{rec['wall_seconds']:.0f}s, ttft p99 {rec['metrics']['ttft']['p99']:.2f}s",
                  file=sys.stderr, flush=True)
    return done


def ms(x) -> str:
    return "-" if x is None else (f"{x * 1000:.0f}" if x * 1000 >= 100 else f"{x * 1000:.1f}")


def ratio(a, b) -> str:
    """a / b, formatted (how many times b is better when a is the baseline)."""
    if a is None or b is None or b <= 0:
        return "-"
    return f"{a / b:.1f}x"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
