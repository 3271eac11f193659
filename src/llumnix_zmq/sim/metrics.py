"""Per-request and per-run metrics of a simulation.

Per request (seconds of virtual time):

| metric            | definition                                                               |
|-------------------|--------------------------------------------------------------------------|
| ttft              | first token emitted − arrival (queueing, dispatch retries, prefill)       |
| decode_per_token  | (last token − first token) / (output tokens − 1); requests with >1 token  |
| e2e               | last token − arrival                                                     |
| preemption_loss   | Σ over preemptions while decoding: next token − start of the preempting   |
|                   | step (re-queueing + recomputation); 0 if never preempted                  |

Per run: mean, p50, p80, p95, p99, max of each; counts of migrations and preemptions; cost in
instance-seconds (launch to stop, startup included); fragmentation = free blocks of instances
whose head-of-line waiting request does not fit them, averaged over the periodic report samples
(time-averaged: the samples are equally spaced per instance).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from ..protocol.messages import TokenDelta
from ..workload import WorkItem

PERCENTILES = (50, 80, 95, 99)


def stats(values: Sequence[float] | np.ndarray) -> dict:
    """mean, p50, p80, p95, p99, max and n of ``values`` (None everywhere when empty)."""
    a = np.asarray(values, dtype=np.float64)
    a = a[~np.isnan(a)]
    if a.size == 0:
        return {"n": 0, "mean": None, **{f"p{p}": None for p in PERCENTILES}, "max": None}
    out = {"n": int(a.size), "mean": float(a.mean())}
    for p, v in zip(PERCENTILES, np.percentile(a, PERCENTILES)):
        out[f"p{p}"] = float(v)
    out["max"] = float(a.max())
    return out


class RequestMetrics:
    """Token timings per request, filled from the deltas each step emits."""

    def __init__(self, items: Sequence[WorkItem], ids: Sequence[str]):
        n = len(items)
        self.items = items
        self.index = {rid: i for i, rid in enumerate(ids)}
        self.arrival = np.array([w.arrival_s for w in items], dtype=np.float64)
        self.first = [math.nan] * n
        self.finish = [math.nan] * n
        self.tokens = [0] * n
        self.preempt_loss = [0.0] * n
        self.preempted_at: dict[int, float] = {}  # request index -> start of the preempting step
        self.num_finished = 0

    def on_deltas(self, deltas: Iterable[TokenDelta], t: float) -> int:
        """Record one step's deltas emitted at ``t``; return how many requests finished."""
        index, first, pending = self.index, self.first, self.preempted_at
        done = 0
        for d in deltas:
            i = index[d.request_id]
            if d.start_index == 0:
                first[i] = t
            if pending and i in pending:
                self.preempt_loss[i] += t - pending.pop(i)
            if d.finish_reason:
                self.finish[i] = t
                self.tokens[i] = d.start_index + len(d.token_ids)
                done += 1
        self.num_finished += done
        return done

    def on_preempted(self, request_id: str, step_start: float) -> None:
        i = self.index[request_id]
        if i not in self.preempted_at:
            self.preempted_at[i] = step_start

    # --- summaries ------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        first = np.asarray(self.first)
        finish = np.asarray(self.finish)
        tokens = np.asarray(self.tokens, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            decode = np.where(tokens > 1, (finish - first) / (tokens - 1), np.nan)
        return {
            "ttft": first - self.arrival,
            "decode_per_token": decode,
            "e2e": finish - self.arrival,
            "preemption_loss": np.asarray(self.preempt_loss),
        }

    def summary(self, mask: np.ndarray | None = None) -> dict:
        out = {}
        for name, a in self.arrays().items():
            out[name] = stats(a if mask is None else a[mask])
        return out


class FragmentationSampler:
    """Σ over instances of free blocks that cannot admit the head-of-line request, averaged
    over periodic samples of each instance."""

    def __init__(self):
        self.blocks = 0.0  # Σ fragmented free blocks over samples
        self.total = 0.0  # Σ total blocks over samples
        self.samples = 0

    def sample(self, free: int, head_demand: int, total: int) -> None:
        if head_demand > free:
            self.blocks += free
        self.total += total
        self.samples += 1

    def summary(self, num_instances_avg: float) -> dict:
        if not self.samples:
            return {"fraction": None, "blocks_per_instance": None}
        return {
            "fraction": self.blocks / self.total if self.total else 0.0,
            "blocks_per_instance": self.blocks / self.samples,
        }
