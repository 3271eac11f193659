"""Read and write whole KV blocks of vLLM's registered KV tensors (one per attention layer).

Where the block index sits depends on the attention backend: vLLM's CPU backend indexes blocks
on dim 0 (``kv[block_id]`` is one block of one layer: K and V, all heads, all slots); the GPU
FlashAttention layout is ``[2, num_blocks, block_size, heads, head_size]`` (dim 1). ``KVBlockIO``
finds the dim whose size is the pool's block count (dim 0 preferred). A migration frame carries
n blocks of every layer as one contiguous host byte array ``[n, num_layers,
bytes_per_block_per_layer]`` (for dim 1, a block's K part then its V part), so the receiver
checks one size and writes each layer with one ``index_copy_`` (on the tensor's own device: a
CUDA KV pool round-trips through host memory here; GPU-to-GPU goes over NCCL, see
worker/migration/nccl.py). Only engines with the same model, dtype, block size and backend can
read each other's frames (the migration protocol pairs instances of one model).
"""

from __future__ import annotations

import numpy as np
import torch


def block_dim(shape: tuple[int, ...], num_blocks: int) -> int:
    """The dim of a KV tensor of ``shape`` that indexes ``num_blocks`` blocks (0, else 1)."""
    for dim in (0, 1):
        if len(shape) > dim and shape[dim] == num_blocks:
            return dim
    raise RuntimeError(f"KV tensor {shape} indexes {num_blocks} blocks on neither dim 0 nor 1")


class KVBlockIO:
    def __init__(self, layers: list[torch.Tensor], num_blocks: int | None = None):
        if not layers:
            raise RuntimeError("no KV tensors registered (is the migration connector loaded?)")
        self.layers = layers
        shapes = {tuple(t.shape) for t in layers}
        dtypes = {t.dtype for t in layers}
        if len(shapes) != 1 or len(dtypes) != 1:
            raise RuntimeError(f"KV layers differ: {shapes} {dtypes}")
        shape = shapes.pop()
        self.dim = block_dim(shape, shape[0] if num_blocks is None else num_blocks)
        self.device = layers[0].device
        self.dtype = dtypes.pop()
        # one block of one layer, block index moved to the front: [*before, *after]
        self.block_shape = shape[:self.dim] + shape[self.dim + 1:]
        self.layer_block_bytes = int(np.prod(self.block_shape)) * layers[0].element_size()
        self.block_bytes = self.layer_block_bytes * len(layers)

    def _index(self, block_ids: list[int]) -> torch.Tensor:
        return torch.tensor(block_ids, dtype=torch.long, device=self.device)

    def read(self, block_ids: list[int]) -> np.ndarray:
        """Blocks ``block_ids`` (in order) of every layer, as a fresh host uint8 array."""
        idx = self._index(block_ids)
        n = len(block_ids)
        out = torch.empty((n, len(self.layers), self.layer_block_bytes), dtype=torch.uint8)
        for i, t in enumerate(self.layers):
            blocks = t.index_select(self.dim, idx)
            if self.dim:
                blocks = blocks.movedim(self.dim, 0)
            out[:, i] = blocks.contiguous().reshape(n, -1).view(torch.uint8).to("cpu")
        return out.numpy()

    def write(self, block_ids: list[int], frame) -> None:
        n = len(block_ids)
        buf = frame if isinstance(frame, np.ndarray) else np.frombuffer(memoryview(frame).cast("B"),
                                                                        dtype=np.uint8)
        if buf.nbytes != n * self.block_bytes:
            raise ValueError(f"frame of {buf.nbytes} bytes, expected {n * self.block_bytes} "
                             f"({n} blocks of {self.block_bytes})")
        data = torch.from_numpy(np.ascontiguousarray(buf).reshape(-1).view(np.uint8).copy()
                                if not buf.flags.writeable else buf.reshape(-1).view(np.uint8))
        data = data.reshape(n, len(self.layers), self.layer_block_bytes)
        idx = self._index(block_ids)
        for i, t in enumerate(self.layers):
            src = data[:, i].contiguous().view(self.dtype).reshape((n, *self.block_shape))
            src = src.to(self.device, non_blocking=False)
            if self.dim:
                src = src.movedim(0, self.dim)
            t.index_copy_(self.dim, idx, src)
