"""KVCache export / import: exact block contents for consecutive and scattered ids on both
ends, gathering into a caller's reused buffer, and a reused buffer never touching blocks an
earlier import already wrote."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from llumnix_zmq.engine.base import EngineError  # noqa: E402
from llumnix_zmq.engine.torch.kv_cache import KVCache, _runs  # noqa: E402

L, NB, BS, H, D = 2, 32, 4, 2, 8


def cache(dtype=torch.float32, seed: int = 0) -> KVCache:
    kv = KVCache(L, NB, BS, H, D, dtype, torch.device("cpu"))
    g = torch.Generator().manual_seed(seed)
    kv.pool.copy_(torch.randn(kv.pool.shape, generator=g).to(dtype))
    return kv


def blocks(kv: KVCache, ids: list[int]) -> torch.Tensor:
    """[n, L, 2, bs, h, d] copy of blocks ``ids`` (the reference)."""
    return kv.pool[ids].clone()


def test_runs():
    assert _runs([]) == []
    assert _runs([3, 4, 5]) == [(0, 3, 3)]
    assert _runs([7, 2, 3, 9, 10, 11, 0]) == [(0, 7, 1), (1, 2, 2), (3, 9, 3), (6, 0, 1)]


@pytest.mark.parametrize("src_ids,dst_ids", [
    ([4, 5, 6, 7], [10, 11, 12, 13]),  # one run each
    ([9, 2, 3, 17], [30, 0, 1, 15]),  # scattered both sides
    ([5], [6]),
], ids=["consecutive", "scattered", "one-block"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_export_import_exact(src_ids, dst_ids, dtype):
    src, dst = cache(dtype, seed=1), cache(dtype, seed=2)
    untouched = [i for i in range(NB) if i not in dst_ids]
    before = blocks(dst, untouched)
    frame = src.export(src_ids)
    assert frame.shape == (len(src_ids), L, BS, 2, H, D) and frame.flags.c_contiguous
    dst.import_(dst_ids, [memoryview(frame).cast("B")])  # as it arrives: bytes
    assert torch.equal(blocks(dst, dst_ids), blocks(src, src_ids))
    assert torch.equal(blocks(dst, untouched), before)


def test_import_several_frames_in_order():
    src, dst = cache(seed=1), cache(seed=2)
    frames = [src.export([1, 2]), src.export([8]), src.export([3, 4, 5])]
    dst.import_([20, 21, 0, 5, 6, 7], frames)
    assert torch.equal(blocks(dst, [20, 21, 0, 5, 6, 7]), blocks(src, [1, 2, 8, 3, 4, 5]))


def test_export_gathers_into_the_given_buffer_and_reuse_leaves_earlier_imports_alone():
    src, dst = cache(seed=1), cache(seed=2)
    per_block = L * 2 * BS * H * D * 4
    buf = np.zeros(4 * per_block, dtype=np.uint8)
    first = src.export([3, 9, 4], out=buf)
    assert np.shares_memory(first, buf)
    dst.import_([0, 1, 2], [first])
    second = src.export([12, 13, 30, 31], out=buf)  # the same buffer, overwritten
    assert np.shares_memory(second, buf)
    dst.import_([10, 11, 12, 13], [second])
    assert torch.equal(blocks(dst, [0, 1, 2]), blocks(src, [3, 9, 4]))
    assert torch.equal(blocks(dst, [10, 11, 12, 13]), blocks(src, [12, 13, 30, 31]))
    big = src.export(list(range(5)), out=buf)  # too small for five blocks: a new array
    assert not np.shares_memory(big, buf)
    assert torch.equal(torch.from_numpy(big), blocks(src, list(range(5))))


def test_device_tensor_export_and_tensor_import():
    src, dst = cache(seed=1), cache(seed=2)
    t = src.export([6, 2], to_numpy=False)
    assert isinstance(t, torch.Tensor) and t.shape == (2, L, BS, 2, H, D)
    dst.import_([1, 9], [t])
    assert torch.equal(blocks(dst, [1, 9]), blocks(src, [6, 2]))


# --- the views layout (zero-copy export) ---------------------------------------------------
BLOCK = L * 2 * BS * H * D * 4  # bytes of one block, every layer's K and V (fp32)


@pytest.mark.parametrize("src_ids,dst_ids", [
    ([4, 5, 6, 7], [10, 11, 12, 13]),
    ([9, 2, 3, 17, 18, 19], [30, 0, 1, 15, 5, 6]),  # runs of 1, 2, 3 onto other runs
], ids=["consecutive", "scattered"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_views_export_import_exact(src_ids, dst_ids, dtype):
    src, dst = cache(dtype, seed=1), cache(dtype, seed=2)
    want = blocks(src, src_ids)
    frames = src.export_views(src_ids, 0)
    runs = _runs(src_ids)
    assert len(frames) == 1 + len(runs)  # block-major: one frame per run of ids
    host = src.pool.view(torch.int16 if dtype == torch.bfloat16 else dtype).numpy()
    assert all(np.shares_memory(f, host) for f in frames[1:])  # no copy: the pool itself
    others = [i for i in range(NB) if i not in dst_ids]
    before = blocks(dst, others)
    dst.import_(dst_ids, [bytes(memoryview(f).cast("B")) for f in frames])  # as received
    assert torch.equal(blocks(dst, dst_ids), want)
    assert torch.equal(blocks(dst, others), before)


def test_views_refused_for_short_runs_or_no_blocks():
    kv = cache()
    assert kv.export_views([3, 4], 2 * BLOCK) is not None
    assert kv.export_views([3, 4, 9], 2 * BLOCK) is None  # the run [9] would be one small frame
    assert kv.export_views([], 0) is None


def test_views_import_checks_the_frames():
    src, dst = cache(seed=1), cache(seed=2)
    frames = src.export_views([4, 5, 6], 0)
    with pytest.raises(EngineError, match="view frames"):
        dst.import_([1, 2, 3], frames[:-1])
    with pytest.raises(EngineError, match="block ids"):
        dst.import_([1, 2], frames)
    bad = list(frames)
    bad[1] = np.asarray(frames[1])[:2]  # a frame of the wrong size
    with pytest.raises(EngineError, match="view frame of"):
        dst.import_([1, 2, 3], bad)


def test_write_and_layer_views_address_block_and_slot():
    kv = cache()
    k = torch.randn(3, H, D, generator=torch.Generator().manual_seed(5))
    v = -k
    slots = torch.tensor([0, 7, 4 * 9 + 2])  # block 0 slot 0, block 1 slot 3, block 9 slot 2
    kv.write(1, k, v, kv.locate(slots))
    layer = kv.layer(1)
    assert layer.shape == (NB, BS, 2, H, D)
    for row, (b, o) in enumerate([(0, 0), (1, 3), (9, 2)]):
        assert torch.equal(layer[b, o, 0], k[row]) and torch.equal(layer[b, o, 1], v[row])
        assert torch.equal(kv.pool[b, 1, o, 0], k[row])  # block-major: pool[block, layer, slot, kv]
    assert not torch.equal(kv.layer(0)[1, 3, 0], k[1])  # the other layer is untouched
