"""Staged export → import into a second engine → continue: identical tokens to a run that was
never interrupted, with exact block accounting on both sides."""

from __future__ import annotations

import numpy as np
import pytest

from llumnix_zmq.engine.base import EngineError, EngineRequest
from llumnix_zmq.protocol.messages import SamplingParams

from torch_engine_helpers import assert_clean, drain, run, tiny_engine

PROMPT = [256] + list(b"The quick brown fox jumps over the lazy dog, again and again")
GREEDY = SamplingParams(max_tokens=40, ignore_eos=True)
SAMPLED = SamplingParams(max_tokens=40, temperature=0.8, top_p=0.9, ignore_eos=True)
SEEDED = SamplingParams(max_tokens=40, temperature=0.8, top_p=0.9, seed=1234, ignore_eos=True)


def _steps(engine, n: int, out: list[int]) -> None:
    for _ in range(n):
        for d in engine.step().deltas:
            assert d.start_index == len(out)
            out.extend(d.token_ids)


def migrate(src, dst, rid: str, as_bytes: bool = False) -> None:
    """Two-stage pre-copy, as worker/migration drives it."""
    wire = (lambda fs: [np.asarray(f).tobytes() for f in fs]) if as_bytes else (lambda fs: fs)
    k = src.num_full_blocks(rid)
    first = dst.reserve_blocks(k)
    dst.import_blocks(first, wire(src.export_blocks(rid, 0, k)))
    _steps(src, 3, _OUT)  # the request keeps decoding on the source meanwhile
    src.suspend(rid)
    total = len(src.request_block_ids(rid))
    rest = dst.reserve_blocks(total - k)
    dst.import_blocks(rest, wire(src.export_blocks(rid, k, total)))
    dst.import_request(src.export_state(rid), first + rest)
    src.remove_request(rid)


_OUT: list[int] = []


@pytest.mark.parametrize("sp", [GREEDY, SAMPLED, SEEDED], ids=["greedy", "sampled", "seeded"])
@pytest.mark.parametrize("dtype,as_bytes", [("float32", False), ("float32", True), ("bfloat16", True)])
def test_migrated_request_continues_identically(sp, dtype, as_bytes):
    ref = run(tiny_engine(dtype=dtype), [EngineRequest("r", PROMPT, sp)])["r"]
    src, dst = tiny_engine(dtype=dtype), tiny_engine(dtype=dtype, num_blocks=200)
    free0 = (src.num_free_blocks(), dst.num_free_blocks())
    src.add_request(EngineRequest("r", PROMPT, sp))
    _OUT.clear()
    _steps(src, 12, _OUT)
    assert [c.request_id for c in src.migration_candidates()] == ["r"]
    migrate(src, dst, "r", as_bytes)
    src.allocator_check()
    dst.allocator_check()
    assert not src.has_request("r") and src.num_free_blocks() == free0[0]
    out = drain(dst, {"r": list(_OUT)})
    assert out["r"] == ref
    assert_clean(src)
    assert_clean(dst)
    assert dst.num_free_blocks() == free0[1]


def test_exported_frame_layout_and_suspend_resume():
    eng = tiny_engine()
    eng.add_request(EngineRequest("r", PROMPT, GREEDY))
    before: list[int] = []
    _steps(eng, 5, before)
    n = len(eng.request_block_ids("r"))
    (frame,) = eng.export_blocks("r", 0, n)
    mc = eng.model_config
    assert frame.shape == (n, mc.num_layers, eng.block_size, 2, mc.num_kv_heads, mc.head_dim)
    assert frame.flags.c_contiguous and frame.dtype == np.float32
    (tensor,) = eng.export_blocks("r", 0, n, to_numpy=False)
    assert np.array_equal(tensor.numpy(), frame)
    assert eng.export_blocks("r", 1, 1) == []
    eng.suspend("r")
    assert not eng.has_work() and eng.migration_candidates() == []
    assert eng.step().deltas == []
    with pytest.raises(EngineError):
        eng.suspend("r")
    eng.resume("r")
    assert drain(eng, {"r": before})["r"] == run(tiny_engine(), [EngineRequest("r", PROMPT, GREEDY)])["r"]
    assert_clean(eng)


def test_import_rejects_bad_input_and_release_undoes_reservation():
    eng = tiny_engine()
    free = eng.num_free_blocks()
    ids = eng.reserve_blocks(2)
    assert ids == [0, 1]
    assert eng.reserve_blocks(10_000) is None
    good = np.zeros((2, 2, 4, 2, 2, 16), dtype=np.float32)  # [n, L, bs, K/V, kv_heads, head_dim]
    eng.import_blocks(ids, [good])
    bad_frames = [
        [good[:1]],  # one block for two ids
        [good.astype(np.float64)],  # dtype
        [np.zeros((2, 2, 4, 2, 2, 8), dtype=np.float32)],  # head_dim
        [b"\x00" * 7],  # not whole blocks
        [object()],
    ]
    for frames in bad_frames:
        with pytest.raises(EngineError):
            eng.import_blocks(ids, frames)
    with pytest.raises(EngineError):
        eng.import_blocks([5, 6], [good])  # not reserved
    with pytest.raises(EngineError):
        eng.export_blocks("nope", 0, 1)
    eng.release_blocks(ids)
    with pytest.raises(EngineError):
        eng.release_blocks(ids)
    assert eng.num_free_blocks() == free
    assert_clean(eng)


def test_import_request_validates_state():
    src, dst = tiny_engine(), tiny_engine(block_size=8)
    src.add_request(EngineRequest("r", PROMPT, GREEDY))
    for _ in range(3):
        src.step()
    state = src.export_state("r")
    ids = dst.reserve_blocks(len(src.request_block_ids("r")))
    with pytest.raises(EngineError):  # block size mismatch
        dst.import_request(state, ids)
    dst.release_blocks(ids)
    same = tiny_engine()
    with pytest.raises(EngineError):  # blocks not reserved
        same.import_request(state, [0, 1, 2])
    few = same.reserve_blocks(1)
    with pytest.raises(EngineError):  # too few blocks
        same.import_request(state, few)
    same.release_blocks(few)
    src.abort_request("r")
    for e in (src, dst, same):
        assert_clean(e)
