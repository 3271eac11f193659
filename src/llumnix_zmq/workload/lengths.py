"""Request length samplers: the paper's bounded power-law ("zipf") lengths and fixed lengths.

Bounded zipf on the integers ``lo..cap``: P(k) ∝ k^-a. The mean falls monotonically from
(lo+cap)/2 at a=0 towards lo as a grows, so for any mean strictly inside that range there is
exactly one exponent; we find it by bisection and sample by inverting the exact CDF.
The *distribution* mean equals the requested mean (to 1e-6 relative); a sample mean is within a
few percent for a few thousand draws (heavier tails need more).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

PAPER_CAP = 6144  # Llumnix §6: power-law lengths capped at 6,144 tokens


def _support(lo: int, cap: int) -> np.ndarray:
    return np.arange(lo, cap + 1, dtype=np.float64)


def _zipf_mean(ks: np.ndarray, logk: np.ndarray, a: float) -> float:
    w = np.exp(-a * (logk - logk[0]))  # scaled by lo^a for stability; mean is scale-free
    return float((ks * w).sum() / w.sum())


@lru_cache(maxsize=64)
def zipf_exponent(mean: float, cap: int = PAPER_CAP, lo: int = 1) -> float:
    """The exponent ``a`` of the bounded zipf on ``lo..cap`` whose mean is ``mean``."""
    if not lo < mean < (lo + cap) / 2:
        raise ValueError(f"zipf mean {mean} must lie strictly between {lo} and {(lo + cap) / 2}")
    ks = _support(lo, cap)
    logk = np.log(ks)
    a_lo, a_hi = 0.0, 1.0
    while _zipf_mean(ks, logk, a_hi) > mean:  # mean decreases in a
        a_hi *= 2.0
    for _ in range(100):
        mid = 0.5 * (a_lo + a_hi)
        if _zipf_mean(ks, logk, mid) > mean:
            a_lo = mid
        else:
            a_hi = mid
        if a_hi - a_lo < 1e-12:
            break
    return 0.5 * (a_lo + a_hi)


@lru_cache(maxsize=64)
def _zipf_cdf(mean: float, cap: int, lo: int) -> np.ndarray:
    a = zipf_exponent(mean, cap, lo)
    logk = np.log(_support(lo, cap))
    w = np.exp(-a * (logk - logk[0]))
    cdf = np.cumsum(w)
    cdf /= cdf[-1]
    cdf.setflags(write=False)
    return cdf


@dataclass(frozen=True)
class ZipfLengths:
    """Bounded power-law lengths on ``lo..cap`` with the given mean."""

    mean: float
    cap: int = PAPER_CAP
    lo: int = 1

    @property
    def exponent(self) -> float:
        return zipf_exponent(float(self.mean), int(self.cap), int(self.lo))

    def expected_mean(self) -> float:
        ks = _support(self.lo, self.cap)
        return _zipf_mean(ks, np.log(ks), self.exponent)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        cdf = _zipf_cdf(float(self.mean), int(self.cap), int(self.lo))
        idx = np.searchsorted(cdf, rng.random(n), side="right")
        return np.minimum(idx, len(cdf) - 1).astype(np.int64) + self.lo


# The Llumnix artifact's exponents (benchmark/benchmark_serving.py, gen_random_response_lens):
# keyed by the mean, valid with its 6,144-token range; any other mean uses 1.0 as it does.
ARTIFACT_ALPHA = {128: 2.0, 256: 1.5, 512: 1.15, 1024: 1.0005}


@dataclass(frozen=True)
class ArtifactZipfLengths:
    """The Llumnix artifact's "zipf" lengths, step for step:

    1. draw ranks k in 1..2·mean−1 with P(k) ∝ k^-alpha (alpha from ``ARTIFACT_ALPHA``);
    2. multiply every draw by mean / (the *sample's* mean) and round up;
    3. cap at ``cap``.

    So lengths are multiples of one step (~35 tokens for mean 128: 61% of requests get exactly
    one step), the sample mean is ``mean`` before the cap (a little below after it), and the tail
    reaches the cap only for means 128 and 256. Unlike :class:`ZipfLengths` the result depends
    on the whole sample (step 2), as the artifact's does.
    """

    mean: int
    cap: int = PAPER_CAP

    @property
    def alpha(self) -> float:
        return ARTIFACT_ALPHA.get(int(self.mean), 1.0) if self.cap == PAPER_CAP else 1.0

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        mean = int(self.mean)
        if mean < 1 or mean != self.mean:
            raise ValueError(f"artifact zipf needs an integer mean >= 1, got {self.mean}")
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        ranks = np.arange(1, max(2 * mean, 2), dtype=np.float64)
        p = ranks ** -self.alpha
        cdf = np.cumsum(p / p.sum())
        idx = np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(ranks) - 1)
        raw = ranks[idx]
        scaled = np.ceil(raw * (mean / raw.mean())).astype(np.int64)
        return np.minimum(scaled, self.cap)


@dataclass(frozen=True)
class FixedLengths:
    """Every request has exactly ``value`` tokens (handy for tests and micro-benchmarks)."""

    value: int

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.full(n, int(self.value), dtype=np.int64)


@dataclass(frozen=True)
class LengthSpec:
    """Parsed ``"kind:IN-OUT[:CAP]"``, e.g. ``zipf:128-512``, ``artifact-zipf:128-128`` or
    ``fixed:64-32``."""

    kind: str
    prompt_mean: float
    output_mean: float
    cap: int = PAPER_CAP

    def samplers(self) -> tuple:
        if self.kind == "zipf":
            return ZipfLengths(self.prompt_mean, self.cap), ZipfLengths(self.output_mean, self.cap)
        if self.kind == "artifact-zipf":
            return (ArtifactZipfLengths(int(self.prompt_mean), self.cap),
                    ArtifactZipfLengths(int(self.output_mean), self.cap))
        return FixedLengths(int(self.prompt_mean)), FixedLengths(int(self.output_mean))


# zipf: power law on 1..cap with the exponent solved for the mean (ours);
# artifact-zipf: the Llumnix artifact's generator (ranks 1..2·mean−1, rescaled, capped)
LENGTH_KINDS = ("zipf", "artifact-zipf", "fixed")


def is_length_spec(text: str) -> bool:
    return text.split(":", 1)[0] in LENGTH_KINDS and ":" in text


def parse_length_spec(text: str) -> LengthSpec:
    """Parse ``zipf:128-512`` (input mean 128, output mean 512, cap 6144) or ``zipf:128-512:2048``."""
    try:
        kind, rest = text.split(":", 1)
        parts = rest.split(":")
        pin, pout = parts[0].split("-")
        cap = int(parts[1]) if len(parts) > 1 else PAPER_CAP
        spec = LengthSpec(kind, float(pin), float(pout), cap)
    except ValueError as exc:
        raise ValueError(f"bad length spec {text!r}: expected e.g. 'zipf:128-512'") from exc
    if kind not in LENGTH_KINDS or len(parts) > 2:
        raise ValueError(f"bad length spec {text!r}: kind must be one of {LENGTH_KINDS}")
    if min(spec.prompt_mean, spec.output_mean) < 1:
        raise ValueError(f"bad length spec {text!r}: lengths must be >= 1")
    return spec
