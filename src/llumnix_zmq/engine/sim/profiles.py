"""Latency profiles of the ``sim`` engine, calibrated from published vLLM step times.

One engine step (continuous batching, prefill chunks and decodes together) is modelled as::

    prefill_ms(T)      = a·T + b                  T = prefill tokens in the step   (0 if T = 0)
    decode_ms(B, K)    = c + d·B + e·K            B = decoding requests, K = their KV tokens
    step_ms(T, B, K)   = o + prefill_ms(T) + decode_ms(B, K)     (0 if the step has no work)
    step_s(T, B, K)    = step_ms(T, B, K) / 1000

``o`` is the engine's fixed cost per step (scheduling, input preparation, sampling, launches),
paid once by every step whatever it holds; a measured step time is a whole step, so the rows
are fitted as ``o + prefill_ms`` and ``o + decode_ms``.

Calibration (``fit_profiles`` recomputes every constant below from the CSV; a test checks that
the constants stay within 5% of the refit):

| profile        | prefill rows (a, b)                        | decode rows (c, d, e)                      |
|----------------|--------------------------------------------|--------------------------------------------|
| llama-7b-a10   | llumnix-artifact-fig10 LLaMA-7B prefill    | llumnix-artifact-fig10 LLaMA-7B decode     |
| llama-7b-a100  | muxserve-llama.json LLaMA-7B prefill       | muxserve-llama.json LLaMA-7B decode ×2     |
| llama-7b-h100  | memgap-repo Llama-2-7B prefill_total       | memgap-repo Llama-2-7B decode_step_avg     |

Decisions:
- Fits minimise *relative* squared error (weighted least squares, weight 1/y): the rows span
  1.5 decades, and a plain fit lets the 8K-token point drive the A10 intercept to −31 ms. A
  negative prefill intercept is clamped to 0 and the slope refitted.
- A10 per-step cost o: the intercept of the prefill rows fitted with attention's quadratic term
  (o + a'·T + q·T², relative error): 5.6 ms. The prefill slope a is then refitted to
  ``row − o`` (through the origin; b = 0).
- A10 decode rows all hold ~8K KV tokens, so they fix d and C = c + 8192·e only. A decode step
  reads the weights and the batch's KV cache at the same memory bandwidth, so C is split in
  proportion to the bytes read: c = C·W / (W + 8192·kv), e = C·kv / (W + 8192·kv) (W = 13.5 GB
  of fp16 weights, kv = 0.5 MiB per token). The rows then imply 479 GB/s, 80% of the A10's 600
  GB/s (vLLM at batch 1 reaches ~77% of an A100's bandwidth ceiling, a published sweep), so
  c = 28.2 ms and e = 1.10 µs per KV token: a batch-1 step at a short context takes ~34 ms
  (~29 tokens/s). An earlier calibration set c to the weights read at the full 600 GB/s (22 ms)
  and gave the rest to e (2.53 µs per KV token, i.e. KV read at 207 GB/s): the same ~43 ms at
  8K KV tokens, but steps at the few thousand KV tokens that most instances hold were 20–35%
  shorter than reading weights and KV at one bandwidth allows.
- H100 decode rows grow context with batch (mean ctx 330), so d and e are collinear: e is the
  A100 e scaled by the ratio of the two batch-1 floors (both bandwidth-bound), d takes the rest.
  The H100 prefill row (20,608 tokens, 587 ms) ran in ceil(20608 / 4096) = 6 iterations, each
  paying the A100 intercept scaled the same way.
- KV capacity: vLLM's 0.9 of GPU memory, minus fp16 weights (6.74 B params) and ~0.83 GiB of
  activations/workspace (the value that reproduces the artifact's 862 A10 blocks).
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LLAMA_7B_KV_BYTES_PER_TOKEN = 2 * 32 * 4096 * 2  # K and V × 32 layers × hidden 4096 × fp16
LLAMA_7B_WEIGHT_BYTES = 6_738_415_616 * 2
GPU_MEMORY_UTILIZATION = 0.9
ACTIVATION_GIB = 0.83


@dataclass(frozen=True)
class LatencyProfile:
    name: str
    a: float  # prefill ms per token
    b: float  # prefill ms per step with prefill work
    c: float  # decode ms per step with decode work
    d: float  # decode ms per request in the batch
    e: float  # decode ms per KV token in the batch
    kv_bytes_per_token: int
    num_blocks: int  # default KV capacity in blocks of ``block_size`` tokens
    block_size: int = 16
    max_batch_size: int = 256
    o: float = 0.0  # ms per step with any work (scheduling, input preparation, sampling)

    def prefill_ms(self, num_tokens: int) -> float:
        return self.a * num_tokens + self.b if num_tokens > 0 else 0.0

    def decode_ms(self, batch: int, kv_tokens: int) -> float:
        return self.c + self.d * batch + self.e * kv_tokens if batch > 0 else 0.0

    def step_ms(self, num_prefill_tokens: int, num_decode_reqs: int, decode_kv_tokens: int) -> float:
        ms = self.prefill_ms(num_prefill_tokens) + self.decode_ms(num_decode_reqs, decode_kv_tokens)
        return ms + self.o if ms > 0.0 else 0.0

    def step_s(self, num_prefill_tokens: int, num_decode_reqs: int, decode_kv_tokens: int) -> float:
        return self.step_ms(num_prefill_tokens, num_decode_reqs, decode_kv_tokens) / 1000.0


def kv_blocks_for_gpu(gpu_mem_bytes: float, block_size: int = 16) -> int:
    """KV blocks of LLaMA-7B fp16 that vLLM would fit on a GPU with this much memory."""
    gib = 2**30
    free = gpu_mem_bytes * GPU_MEMORY_UTILIZATION - LLAMA_7B_WEIGHT_BYTES - ACTIVATION_GIB * gib
    return int(free // (LLAMA_7B_KV_BYTES_PER_TOKEN * block_size))


# Constants = fit_profiles(vllm_step_times.csv), rounded (see the table in the module docstring).
PROFILES: dict[str, LatencyProfile] = {
    p.name: p
    for p in (
        # A10-24GB, llumnix-artifact-fig10 rows: prefill 58..1995 ms @ 256..8192 tokens,
        # decode 46.80..43.62 ms @ batch 32..1 with ~8192 KV tokens; 862 blocks (24 GB).
        LatencyProfile(
            "llama-7b-a10", a=0.21482, b=0.0, c=28.160, d=0.11919, e=0.0010955,
            kv_bytes_per_token=LLAMA_7B_KV_BYTES_PER_TOKEN, num_blocks=862,  # kv_blocks_for_gpu(24e9)
            o=5.5823,
        ),
        # A100-80GB, muxserve-llama.json rows: decode 11.5..40.4 ms (ctx 128) and
        # 12.5..40.9 ms (ctx 512), prefill 41.0..2436.3 ms @ 512..32768 tokens; 80 GB.
        LatencyProfile(
            "llama-7b-a100", a=0.074017, b=3.0766, c=11.364, d=0.061971, e=0.00031802,
            kv_bytes_per_token=LLAMA_7B_KV_BYTES_PER_TOKEN, num_blocks=6870,  # kv_blocks_for_gpu(80e9)
        ),
        # H100-64GB, memgap-repo rows: decode 11.35..31.45 ms @ batch 1..128 (ctx 161..499),
        # prefill 587 ms for 128 × 161 tokens; 64 GB.
        LatencyProfile(
            "llama-7b-h100", a=0.027592, b=3.0647, c=11.320, d=0.054574, e=0.00031678,
            kv_bytes_per_token=LLAMA_7B_KV_BYTES_PER_TOKEN, num_blocks=5153,  # kv_blocks_for_gpu(64e9)
        ),
    )
}
DEFAULT_PROFILE = "llama-7b-a10"


def get_profile(name: str) -> LatencyProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown sim profile {name!r}; known: {', '.join(sorted(PROFILES))}") from None


# ----------------------------------------------------------------------------- calibration


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d+(?:\.\d+)?", text)]


def _row(rows: list[dict], source: str, model: str, quantity: str) -> list[dict]:
    found = [r for r in rows if r["source"] == source and r["model"] == model and r["quantity"] == quantity]
    if not found:
        raise ValueError(f"calibration row missing: {source} {model} {quantity}")
    return found


def _rel_lstsq(columns: list[np.ndarray], y: np.ndarray) -> np.ndarray:
    """Least squares on relative error: minimise sum(((X @ p) - y) / y) ** 2."""
    x = np.column_stack(columns) / y[:, None]
    return np.linalg.lstsq(x, np.ones_like(y), rcond=None)[0]


def _fit_prefill(tokens: np.ndarray, ms: np.ndarray) -> tuple[float, float]:
    a, b = _rel_lstsq([tokens, np.ones_like(tokens)], ms)
    if b < 0:  # clamp the intercept, refit the slope alone
        (a,), b = _rel_lstsq([tokens], ms), 0.0
    return float(a), float(b)


def _prefill_points(row: dict) -> list[tuple]:
    return [(t, 1, v) for t, v in zip(_numbers(row["context_or_prompt_tokens"]), _numbers(row["value_ms"]))]


def calibration_points(csv_path: Path) -> dict[str, dict[str, list[tuple]]]:
    """The CSV rows each profile is fitted to: ``{profile: {"prefill": [(tokens, iterations,
    ms)], "decode": [(batch, kv_tokens, ms)]}}``."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    pts: dict[str, dict[str, list[tuple]]] = {}
    # A10: decode_7b=[...] in the notes, batch = 8192 / seq_len for seq_len 256..8192
    (pre,) = _row(rows, "llumnix-artifact-fig10", "LLaMA-7B", "prefill(recompute)_latency")
    (dec,) = _row(rows, "llumnix-artifact-fig10", "LLaMA-7B", "decode_step")
    seq = [256 * 2**i for i in range(6)]
    dec_ms = _numbers(dec["notes"].split("decode_7b=")[1].split("]")[0])
    pts["llama-7b-a10"] = {
        "prefill": _prefill_points(pre),
        "decode": [(8192 // s, 8192, v) for s, v in zip(seq, dec_ms)],
    }
    # A100: two decode rows (ctx 128, ctx 512 per request), one prefill row
    decode = []
    for r in _row(rows, "muxserve-llama.json", "LLaMA-7B", "decode_step"):
        ctx = _numbers(r["context_or_prompt_tokens"])[0]
        decode += [(b, b * ctx, v) for b, v in zip(_numbers(r["batch_size"]), _numbers(r["value_ms"]))]
    (pre,) = _row(rows, "muxserve-llama.json", "LLaMA-7B", "prefill")
    prefill = _prefill_points(pre)
    pts["llama-7b-a100"] = {"prefill": prefill, "decode": decode}
    # H100: ctx grows 161..499 while decoding, mean 330; prefill in 4096-token iterations
    (dec,) = _row(rows, "memgap-repo", "Llama-2-7B", "decode_step_avg")
    lo, hi = _numbers(dec["context_or_prompt_tokens"].split("ctx")[1])
    ctx = (lo + hi) / 2
    decode = [(b, b * ctx, v) for b, v in zip(_numbers(dec["batch_size"]), _numbers(dec["value_ms"]))]
    (pre,) = _row(rows, "memgap-repo", "Llama-2-7B", "prefill_total")
    tokens = _numbers(pre["context_or_prompt_tokens"])[-1]
    prefill = [(tokens, math.ceil(tokens / 4096), _numbers(pre["value_ms"])[0])]
    pts["llama-7b-h100"] = {"prefill": prefill, "decode": decode}
    return pts


def fit_profiles(csv_path: Path) -> dict[str, dict[str, float]]:
    """Recompute the a, b, c, d, e, o constants of every profile from the CSV."""
    pts = calibration_points(csv_path)
    out: dict[str, dict[str, float]] = {}

    p = np.array(pts["llama-7b-a10"]["prefill"], dtype=float)
    tokens, ms = p[:, 0], p[:, 2]
    o = float(_rel_lstsq([np.ones_like(tokens), tokens, tokens**2], ms)[0])
    (a,) = _rel_lstsq([tokens], ms - o)
    q = np.array(pts["llama-7b-a10"]["decode"], dtype=float)
    d, total = _rel_lstsq([q[:, 0], np.ones(len(q))], q[:, 2] - o)
    kv_bytes = q[0, 1] * LLAMA_7B_KV_BYTES_PER_TOKEN  # weights and KV read at one bandwidth
    c = total * LLAMA_7B_WEIGHT_BYTES / (LLAMA_7B_WEIGHT_BYTES + kv_bytes)
    e = (total - c) / q[0, 1]
    out["llama-7b-a10"] = dict(a=float(a), b=0.0, c=float(c), d=float(d), e=float(e), o=o)

    p = np.array(pts["llama-7b-a100"]["prefill"], dtype=float)
    a, b = _fit_prefill(p[:, 0], p[:, 2])
    q = np.array(pts["llama-7b-a100"]["decode"], dtype=float)
    c, d, e = _rel_lstsq([np.ones(len(q)), q[:, 0], q[:, 1]], q[:, 2])
    a100 = out["llama-7b-a100"] = dict(a=a, b=b, c=float(c), d=float(d), e=float(e), o=0.0)

    q = np.array(pts["llama-7b-h100"]["decode"], dtype=float)
    c, slope = _rel_lstsq([np.ones(len(q)), q[:, 0]], q[:, 2])
    scale = c / a100["c"]
    e = a100["e"] * scale
    ctx = q[0, 1] / q[0, 0]
    ((tokens, iters, ms),) = pts["llama-7b-h100"]["prefill"]
    b = a100["b"] * scale
    a, d = (ms - iters * b) / tokens, slope - e * ctx
    out["llama-7b-h100"] = dict(a=float(a), b=float(b), c=float(c), d=float(d), e=float(e), o=0.0)
    return out
