"""``build_workload``: one call from a workload description to a list of :class:`WorkItem`.

Determinism: every random quantity comes from its own child of ``SeedSequence(seed)``
(prompt lengths, output lengths, arrivals, priorities), so e.g. changing the priority
fraction never changes the lengths or the arrivals of the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arrivals import gamma_arrivals, poisson_arrivals, trace_arrivals, trace_rate
from .lengths import is_length_spec, parse_length_spec
from .traces import load_trace, resolve_trace

ARRIVALS = ("poisson", "gamma", "trace")
NORMAL, HIGH = 0, 1


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One request of a workload: when it arrives (s since start) and how long it is."""

    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    priority: int = NORMAL  # 0 normal, 1 high


def _streams(seed: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]


def _lengths(trace: str, n: int, fmt: str | None, traces_dir, rngs):
    """(prompt, output, recorded offsets or None) for a length spec or a trace."""
    if is_length_spec(trace):
        p_sampler, o_sampler = parse_length_spec(trace).samplers()
        return p_sampler.sample(n, rngs[0]), o_sampler.sample(n, rngs[1]), None
    tr = load_trace(resolve_trace(trace, traces_dir), fmt)
    if len(tr) == 0:
        raise ValueError(f"trace {trace!r} has no rows")
    prompt = np.resize(tr.prompt_tokens, n)  # first n rows, cycled when the trace is short
    output = np.resize(tr.output_tokens, n)
    return prompt, output, tr.arrival_s


def _arrivals(arrival: str, n: int, rate: float | None, cv: float, time_scale: float,
              offsets: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    if arrival not in ARRIVALS:
        raise ValueError(f"unknown arrival {arrival!r}; expected one of {ARRIVALS}")
    if arrival == "trace":
        if offsets is None:
            raise ValueError("arrival='trace' needs a trace with timestamps (azure or mooncake)")
        return trace_arrivals(offsets, n, rate, time_scale)
    if not time_scale > 0:
        raise ValueError(f"time_scale must be > 0, got {time_scale}")
    if rate is None:
        if offsets is None:
            raise ValueError(f"arrival={arrival!r} needs a rate (req/s)")
        rate = trace_rate(offsets[: max(n, 2)])  # the trace's own mean rate
    out = poisson_arrivals(n, rate, rng) if arrival == "poisson" else \
        gamma_arrivals(n, rate, cv, rng)
    return out * time_scale


def build_workload(trace: str, n: int, rate: float | None = None, arrival: str = "poisson",
                   cv: float = 1.0, time_scale: float = 1.0, priority_fraction: float = 0.0,
                   seed: int = 0, trace_format: str | None = None, max_prompt: int | None = None,
                   max_output: int | None = None, traces_dir: str | None = None) -> list[WorkItem]:
    """Build ``n`` requests sorted by arrival.

    trace: ``"zipf:IN-OUT[:CAP]"`` / ``"artifact-zipf:IN-OUT"`` / ``"fixed:IN-OUT"``, a trace
        file path, or a short name
        ``azure`` | ``mooncake`` | ``sharegpt`` (files in $LLUMNIX_TRACES_DIR or ../shared/traces).
    arrival: ``poisson`` | ``gamma`` (rate r, CV cv) | ``trace`` (recorded timestamps; ``rate``
        then rescales them to that mean rate). ``time_scale`` multiplies every offset.
        For poisson/gamma on a timestamped trace, rate=None means the trace's own mean rate.
    Lengths are clipped to [1, max_prompt] / [1, max_output]; trace rows are taken in file order
    and cycled when ``n`` exceeds the trace.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= priority_fraction <= 1.0:
        raise ValueError(f"priority_fraction must be in [0, 1], got {priority_fraction}")
    if n == 0:
        return []
    rngs = _streams(seed)
    prompt, output, offsets = _lengths(trace, n, trace_format, traces_dir, rngs)
    prompt = np.clip(prompt, 1, max_prompt if max_prompt is not None else None)
    output = np.clip(output, 1, max_output if max_output is not None else None)
    times = _arrivals(arrival, n, rate, cv, time_scale, offsets, rngs[2])
    high = rngs[3].random(n) < priority_fraction
    return [
        WorkItem(float(t), int(p), int(o), HIGH if h else NORMAL)
        for t, p, o, h in zip(times.tolist(), prompt.tolist(), output.tolist(), high.tolist())
    ]


def workload_summary(items: list[WorkItem]) -> dict:
    """Means, span and rate of a workload (for logs and JSON results)."""
    if not items:
        return {"n": 0}
    t = np.array([w.arrival_s for w in items])
    span = float(t[-1] - t[0])
    return {
        "n": len(items),
        "prompt_mean": float(np.mean([w.prompt_tokens for w in items])),
        "output_mean": float(np.mean([w.output_tokens for w in items])),
        "span_s": span,
        "rate": (len(items) - 1) / span if span > 0 else None,
        "high_priority": sum(w.priority for w in items),
    }
