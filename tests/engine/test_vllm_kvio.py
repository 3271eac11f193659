"""KV block frames of the vllm backend (engine/vllm/kvio.py), for both KV layouts vLLM uses:
blocks on dim 0 (CPU attention) and ``[2, num_blocks, ...]`` (GPU FlashAttention). Needs only
torch: runs in the main test environment."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from llumnix_zmq.engine.vllm.kvio import KVBlockIO, block_dim  # noqa: E402

NB = 6


def layers(shape, n=3, offset=0):
    size = int(torch.tensor(shape).prod())
    return [torch.arange(size, dtype=torch.float32).reshape(shape) + 1000 * (i + offset)
            for i in range(n)]


@pytest.mark.parametrize("shape,dim", [((NB, 2, 4, 2, 8), 0), ((2, NB, 4, 2, 8), 1)],
                         ids=["cpu-dim0", "flash-dim1"])
def test_blocks_move_exactly_between_pools(shape, dim):
    src, dst = KVBlockIO(layers(shape), NB), KVBlockIO(layers(shape, offset=7), NB)
    assert src.dim == dim and src.block_bytes == 3 * 2 * 4 * 2 * 8 * 4
    frame = src.read([4, 1])
    assert frame.shape == (2, 3, src.layer_block_bytes)
    before = [t.clone() for t in dst.layers]
    dst.write([0, 5], frame)
    for s, d, b in zip(src.layers, dst.layers, before):
        pick = (lambda t, i: t[i]) if dim == 0 else (lambda t, i: t[:, i])
        assert torch.equal(pick(d, 0), pick(s, 4)) and torch.equal(pick(d, 5), pick(s, 1))
        for untouched in (1, 2, 3, 4):
            assert torch.equal(pick(d, untouched), pick(b, untouched))
    # a frame as raw bytes (what a ZeroMQ frame carries) writes the same
    dst.write([2], memoryview(src.read([3]).tobytes()))
    assert all(torch.equal((d[2] if dim == 0 else d[:, 2]), (s[3] if dim == 0 else s[:, 3]))
               for s, d in zip(src.layers, dst.layers))


def test_bad_frames_and_layouts_refused():
    io = KVBlockIO(layers((NB, 4, 8)), NB)
    with pytest.raises(ValueError, match="expected"):
        io.write([1, 2], io.read([1]))
    with pytest.raises(RuntimeError, match="neither"):
        block_dim((3, 4, 5), NB)
    with pytest.raises(RuntimeError, match="differ"):
        KVBlockIO([torch.zeros(NB, 4), torch.zeros(NB, 5)])
    with pytest.raises(RuntimeError, match="no KV tensors"):
        KVBlockIO([])
