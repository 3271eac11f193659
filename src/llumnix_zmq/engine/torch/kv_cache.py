"""The paged KV cache: one preallocated pool, addressed by block id.

Layout (one tensor)::

    pool[layer, kv, block, slot, kv_head, head_dim]     kv: 0 = K, 1 = V
         └ L    └ 2 └ num_blocks └ block_size

A token at position p of a request lives in block ``table[p // bs]``, slot ``p % bs``; its flat
slot id is ``block * bs + slot``. Exported frames are the same layout restricted to the
exported blocks, ``[L, 2, n, bs, kv_heads, head_dim]``, contiguous.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ..base import EngineError

# numpy has no bfloat16: such frames travel as their 16-bit pattern
_NUMPY_VIEW = {torch.float32: (torch.float32, np.float32), torch.float16: (torch.float16, np.float16),
               torch.bfloat16: (torch.int16, np.int16)}


class KVCache:
    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device):
        self.num_layers, self.num_blocks, self.block_size = num_layers, num_blocks, block_size
        self.num_kv_heads, self.head_dim, self.dtype = num_kv_heads, head_dim, dtype
        self.pool = torch.zeros(num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim,
                                dtype=dtype, device=device)

    @staticmethod
    def bytes_per_block(num_layers, block_size, num_kv_heads, head_dim, dtype) -> int:
        elem = torch.empty((), dtype=dtype).element_size()
        return num_layers * 2 * block_size * num_kv_heads * head_dim * elem

    @property
    def block_shape(self) -> tuple[int, ...]:
        return (self.num_layers, 2, self.block_size, self.num_kv_heads, self.head_dim)

    def layer(self, n: int) -> torch.Tensor:
        """[2, num_blocks, bs, kv_heads, head_dim] view of one layer."""
        return self.pool[n]

    def write(self, n: int, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor) -> None:
        """Store new K/V rows [N, kv_heads, head_dim] at flat slot ids ``slots`` [N]."""
        flat = self.pool[n].view(2, -1, self.num_kv_heads, self.head_dim)
        flat[0].index_copy_(0, slots, k)
        flat[1].index_copy_(0, slots, v)

    # ------------------------------------------------------------------ migration
    def export(self, block_ids: list[int], to_numpy: bool = True):
        """Blocks ``block_ids`` as one contiguous [L, 2, n, bs, h, d] buffer (numpy on CPU, or a
        device tensor for a GPU data plane)."""
        idx = torch.tensor(block_ids, dtype=torch.long, device=self.pool.device)
        out = self.pool.index_select(2, idx).contiguous()
        if not to_numpy:
            return out
        view_dtype, _ = _NUMPY_VIEW[self.dtype]
        return out.cpu().view(view_dtype).numpy()

    def import_(self, block_ids: list[int], frames: list) -> None:
        """Scatter the frames' blocks into ``block_ids`` (in order): one copy per frame, straight
        from the receive buffer into the pool (no staging copy, no concatenation)."""
        tensors = [self._frame_tensor(f) for f in frames]
        n = sum(t.shape[2] for t in tensors)
        if n != len(block_ids):
            raise EngineError(f"import: frames hold {n} blocks, {len(block_ids)} block ids given")
        start = 0
        for t in tensors:
            k = t.shape[2]
            idx = torch.tensor(block_ids[start:start + k], dtype=torch.long,
                               device=self.pool.device)
            self.pool.index_copy_(2, idx, t.to(self.pool.device))
            start += k

    def _frame_tensor(self, frame) -> torch.Tensor:
        """A frame (numpy array, torch tensor, bytes-like) as [L, 2, n, bs, h, d] of our dtype."""
        L, two, bs, h, d = self.block_shape
        view_dtype, np_dtype = _NUMPY_VIEW[self.dtype]
        if isinstance(frame, torch.Tensor):
            if frame.dtype != self.dtype:
                raise EngineError(f"import: tensor dtype {frame.dtype}, engine uses {self.dtype}")
            t = frame
        elif isinstance(frame, np.ndarray):
            if frame.dtype != np_dtype:
                raise EngineError(f"import: array dtype {frame.dtype}, expected {np.dtype(np_dtype)}")
            t = torch.from_numpy(np.ascontiguousarray(frame)).view(self.dtype)
        else:
            try:
                buf = memoryview(frame).cast("B")
            except TypeError as exc:
                raise EngineError(f"import: unsupported frame type {type(frame).__name__}") from exc
            per_block = L * two * bs * h * d * np.dtype(np_dtype).itemsize
            if buf.nbytes == 0 or buf.nbytes % per_block:
                raise EngineError(f"import: frame of {buf.nbytes} bytes is not whole blocks")
            arr = np.frombuffer(buf, dtype=np_dtype)
            with warnings.catch_warnings():  # read-only receive buffer: we only read from it
                warnings.simplefilter("ignore", UserWarning)
                t = torch.from_numpy(arr).view(self.dtype).view(L, two, -1, bs, h, d)
        if t.dim() != 6 or (t.shape[0], t.shape[1], *t.shape[3:]) != self.block_shape:
            raise EngineError(f"import: frame shape {tuple(t.shape)} does not match {self.block_shape}")
        return t
