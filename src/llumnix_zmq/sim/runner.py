"""One simulation run from a config to a result dict (what ``llumnix-zmq sim --json`` writes).

    from llumnix_zmq.sim import SimulationConfig, run_simulation
    result = run_simulation(SimulationConfig(instances=16, trace="zipf:128-128", rate=34,
                                             requests=10000, policy="llumnix", seed=1))
    result["metrics"]["ttft"]["p99"]   # seconds

Everything in the result except ``wall_seconds`` and ``sim_speed`` is a pure function of the
config (same seed, same JSON).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import numpy as np

from ..workload import WorkItem, build_workload, workload_summary
from .cluster import Simulation
from .config import SimulationConfig
from .metrics import stats


def build_items(cfg: SimulationConfig) -> list[WorkItem]:
    """The workload of ``cfg``; prompts are clipped to the engine's max_model_len - 1."""
    max_len = cfg.engine_config().max_model_len
    blocks = cfg.num_blocks
    if blocks is not None:
        max_len = min(max_len, blocks * cfg.block_size)
    return build_workload(cfg.trace, cfg.requests, cfg.rate, cfg.arrival, cfg.cv, cfg.time_scale,
                          cfg.priority_fraction, cfg.seed, cfg.trace_format, max_prompt=max_len - 1,
                          max_output=cfg.max_output)


class _Progress:
    """tqdm when installed, else a plain line on stderr every 2%."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.n, self.bar, self.enabled = total, 0, None, enabled
        self._next = 0
        if not enabled:
            return
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="req", desc="sim", file=sys.stderr, mininterval=0.5)
        except ImportError:
            self.bar = None

    def __call__(self, k: int) -> None:
        self.n += k
        if self.bar is not None:
            self.bar.update(k)
        elif self.enabled and self.n >= self._next:
            print(f"\rsim: {self.n}/{self.total} requests", end="", file=sys.stderr, flush=True)
            self._next = self.n + max(1, self.total // 50)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            print(file=sys.stderr)


def run_simulation(cfg: SimulationConfig, items: Sequence[WorkItem] | None = None) -> dict:
    items = build_items(cfg) if items is None else list(items)
    enabled = cfg.progress if cfg.progress is not None else \
        (len(items) >= 2000 and sys.stderr.isatty())
    progress = _Progress(len(items), enabled)
    sim = Simulation(cfg, items, on_progress=progress if enabled else None)
    t0 = time.perf_counter()
    try:
        sim.run()
    finally:
        progress.close()
    wall = time.perf_counter() - t0
    return result_dict(sim, items, wall)


def result_dict(sim: Simulation, items: Sequence[WorkItem], wall: float) -> dict:
    cfg = sim.cfg
    end = sim.end_time
    inst_s = sum(i.cost_s(end) for i in sim.instances.values())
    engines = [i.engine for i in sim.instances.values()]
    metrics = sim.metrics.summary()
    metrics["ttft_long_prompts"] = long_prompt_ttft(sim, items)
    metrics.update({
        "instance_seconds": inst_s,
        "avg_instances": inst_s / end if end > 0 else None,
        "migrations": sim.counts["migrations_committed"],
        "migrations_started": sim.counts["migrations_started"],
        "migration_outcomes": dict(sorted(sim.migration_outcomes.items())),
        "migration_reasons": dict(sorted(sim.migration_reasons.items())),
        "migration_downtime": stats(sim.downtimes),
        "migration_blocks": sim.migration_blocks,
        "preemptions": sum(e.num_preemptions for e in engines),
        "preempted_tokens": sum(e.num_preempted_tokens for e in engines),
        "fragmentation": sim.frag.summary(inst_s / end if end > 0 else 0.0),
        "makespan_s": end,
        "throughput_rps": len(items) / end if end > 0 else None,
        "busy_fraction": sum(i.busy_s for i in sim.instances.values()) / inst_s if inst_s else None,
        "dispatch_retries": sim.counts["dispatch_retries"],
        "scale_out": sim.counts["scale_out"],
        "scale_in": sim.counts["scale_in"],
        "undrain": sim.counts["undrain"],
        "instances_stopped": sim.counts["stopped"],
        "instances_launched": len(sim.instances),
    })
    out = {
        "config": cfg.to_dict(),
        "workload": workload_summary(list(items)),
        "metrics": metrics,
    }
    prio = np.array([w.priority for w in items], dtype=np.int64)
    if prio.any():
        out["by_priority"] = {"high": sim.metrics.summary(prio == 1),
                              "normal": sim.metrics.summary(prio == 0)}
    out["finished"] = sim.finished
    out["truncated"] = sim.truncated
    out["instance_timeline"] = _thin(sim.instance_timeline)
    out["events"] = sim.queue.num_events
    out["sim_seconds"] = end
    out["wall_seconds"] = wall
    out["sim_speed"] = end / wall if wall > 0 else None
    return out


def long_prompt_ttft(sim: Simulation, items: Sequence[WorkItem], top: float = 1.0) -> dict:
    """TTFT stats of the requests whose prompt is among the longest ``top`` percent. These are the
    requests that fragmentation makes wait (their prompt needs the most free blocks at once); at
    1% of a run they sit at or beyond its P99, so P99 alone can hide them."""
    prompts = np.array([w.prompt_tokens for w in items], dtype=np.int64)
    if prompts.size == 0:
        return stats([])
    cut = np.percentile(prompts, 100.0 - top)
    return stats(sim.metrics.arrays()["ttft"][prompts >= cut])


def _thin(timeline: list[tuple[float, int]], max_points: int = 2000) -> list[list[float]]:
    step = max(1, len(timeline) // max_points)
    return [[round(t, 6), n] for t, n in timeline[::step]]
