"""Arrival processes. Every function returns ``n`` non-decreasing offsets in seconds, first 0.0.

- Poisson at rate r: exponential gaps with mean 1/r (CV 1).
- Gamma at rate r with coefficient of variation cv: gaps ~ Gamma(shape=1/cv², scale=cv²/r),
  so the mean gap is 1/r and std/mean = cv (cv=1 is Poisson; the paper uses cv 2–8).
- Trace: the recorded offsets, optionally rescaled to a target mean rate and/or stretched by a
  time scale (offset × time_scale; 2.0 = half the rate, 0.5 = twice the rate).
A rate of ``inf`` sends everything at t=0.
"""

from __future__ import annotations

import math

import numpy as np


def _from_gaps(gaps: np.ndarray) -> np.ndarray:
    out = np.empty(len(gaps) + 1, dtype=np.float64)
    out[0] = 0.0
    np.cumsum(gaps, out=out[1:])
    return out


def _check(n: int, rate: float) -> None:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not rate > 0:
        raise ValueError(f"rate must be > 0 (req/s), got {rate}")


def poisson_arrivals(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    _check(n, rate)
    if n == 0:
        return np.zeros(0)
    if math.isinf(rate):
        return np.zeros(n)
    return _from_gaps(rng.exponential(1.0 / rate, size=n - 1))


def gamma_arrivals(n: int, rate: float, cv: float, rng: np.random.Generator) -> np.ndarray:
    _check(n, rate)
    if not cv > 0:
        raise ValueError(f"cv must be > 0, got {cv}")
    if n == 0:
        return np.zeros(0)
    if math.isinf(rate):
        return np.zeros(n)
    shape = 1.0 / (cv * cv)
    return _from_gaps(rng.gamma(shape, 1.0 / (rate * shape), size=n - 1))


def trace_rate(offsets: np.ndarray) -> float:
    """Mean request rate of recorded offsets: (n-1) / span."""
    span = float(offsets[-1] - offsets[0]) if len(offsets) > 1 else 0.0
    return (len(offsets) - 1) / span if span > 0 else math.inf


def extend_offsets(offsets: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` offsets; past the end, replay the trace again after one mean gap."""
    if n <= len(offsets):
        return np.asarray(offsets[:n], dtype=np.float64)
    if len(offsets) == 0:
        raise ValueError("cannot extend an empty trace")
    rate = trace_rate(offsets)
    period = float(offsets[-1] - offsets[0]) + (1.0 / rate if math.isfinite(rate) else 0.0)
    reps = -(-n // len(offsets))
    base = np.asarray(offsets, dtype=np.float64) - offsets[0]
    tiled = np.concatenate([base + i * period for i in range(reps)])
    return tiled[:n]


def trace_arrivals(offsets: np.ndarray, n: int, rate: float | None = None,
                   time_scale: float = 1.0) -> np.ndarray:
    """Recorded offsets (first ``n``, replayed if short), rescaled to ``rate`` then × time_scale."""
    if not time_scale > 0:
        raise ValueError(f"time_scale must be > 0, got {time_scale}")
    out = extend_offsets(offsets, n)
    out = out - out[0] if len(out) else out
    if rate is not None:
        _check(n, rate)
        if math.isinf(rate):
            return np.zeros(n)
        have = trace_rate(out)
        if math.isfinite(have):
            out = out * (have / rate)
    return out * time_scale
