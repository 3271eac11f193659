"""The paged KV cache: one preallocated pool, addressed by block id.

Layout (one tensor, block-major)::

    pool[block, layer, slot, kv, kv_head, head_dim]     kv: 0 = K, 1 = V
         └ num_blocks └ L └ block_size └ 2

A block holds every layer's K and V for its ``block_size`` positions in one contiguous stretch,
so a run of consecutive block ids is one contiguous range of the pool: migration sends it as a
single frame read straight from the pool, and imports it with one copy (per-layer layouts need
2 × L frames and copies per run, and each ZeroMQ frame costs: 60 frames per 16 MiB part move
~20% less than one frame here, bench/zmq_frames.py). The model reads one layer at a time: ``layer(n)``
is a strided view [num_blocks, bs, 2, kv_heads, head_dim] in which each block's rows stay
contiguous, so attention gathers a request's blocks along the first axis (a memcpy per block)
into [n, bs, 2, ...], whose K and V are [tokens, kv_heads, head_dim] views with no further
copy. A token at position p of a request lives in block ``table[p // bs]``, slot
``p % bs``; its flat slot id is ``block * bs + slot``. Exported frames come in two layouts
(``import_`` takes both):

    gathered  one frame [n, L, bs, 2, kv_heads, head_dim]: the exported blocks copied together
    views     [descriptor][pool[a:a+m] for each run (a, m)]: no copy, the frames are the pool's
              own memory; the descriptor is VIEWS_MAGIC + the run lengths (uint32 LE). A run is
              a range of consecutive block ids.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ..base import EngineError

# numpy has no bfloat16: such frames travel as their 16-bit pattern
VIEWS_MAGIC = b"LLXKVV2\0"  # 2: block-major runs (1 was one frame per layer and K/V)

_NUMPY_VIEW = {torch.float32: (torch.float32, np.float32), torch.float16: (torch.float16, np.float16),
               torch.bfloat16: (torch.int16, np.int16)}


class KVCache:
    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device):
        self.num_layers, self.num_blocks, self.block_size = num_layers, num_blocks, block_size
        self.num_kv_heads, self.head_dim, self.dtype = num_kv_heads, head_dim, dtype
        self.pool = torch.zeros(num_blocks, num_layers, block_size, 2, num_kv_heads, head_dim,
                                dtype=dtype, device=device)
        self.block_bytes = self.bytes_per_block(num_layers, block_size, num_kv_heads, head_dim,
                                                dtype)  # one block, every layer's K and V

    @staticmethod
    def bytes_per_block(num_layers, block_size, num_kv_heads, head_dim, dtype) -> int:
        elem = torch.empty((), dtype=dtype).element_size()
        return num_layers * 2 * block_size * num_kv_heads * head_dim * elem

    @property
    def block_shape(self) -> tuple[int, ...]:
        return (self.num_layers, self.block_size, 2, self.num_kv_heads, self.head_dim)

    def layer(self, n: int) -> torch.Tensor:
        """[num_blocks, bs, 2, kv_heads, head_dim] view of one layer (strided over blocks)."""
        return self.pool[:, n]

    def locate(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(block, slot in block) of flat slot ids ``slots`` [N]: once per step, for ``write``."""
        blocks = torch.div(slots, self.block_size, rounding_mode="floor")
        return blocks, slots - blocks * self.block_size

    def write(self, n: int, k: torch.Tensor, v: torch.Tensor,
              where: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Store new K/V rows [N, kv_heads, head_dim] of layer ``n`` at ``where`` (``locate``)."""
        self.layer(n)[where] = torch.stack((k, v), 1)

    # ------------------------------------------------------------------ migration
    # On a CPU pool both directions copy with numpy, one contiguous copy per run of
    # consecutive block ids: single-threaded on purpose (torch's OpenMP copies fell to ~0.1-1
    # GB/s here whenever ZeroMQ's I/O thread or another process held one of the two cores),
    # and a slice copy runs ~2x index_select's speed (10 vs 5 GB/s measured, one thread).

    def export(self, block_ids: list[int], to_numpy: bool = True, out=None):
        """Blocks ``block_ids`` as one contiguous [n, L, bs, 2, h, d] frame: a numpy array on
        CPU, gathered into ``out`` (a uint8 array the caller reuses) when it is large enough, or
        a device tensor (``to_numpy=False``) for a GPU data plane."""
        view_dtype, np_dtype = _NUMPY_VIEW[self.dtype]
        if not to_numpy or self.pool.device.type != "cpu":
            idx = torch.tensor(block_ids, dtype=torch.long, device=self.pool.device)
            t = self.pool.index_select(0, idx)
            return t if not to_numpy else t.cpu().view(view_dtype).numpy()
        frame = _view_of(out, (len(block_ids), *self.block_shape), np_dtype)
        host = self._host()
        for j, a, m in _runs(block_ids):
            np.copyto(frame[j:j + m], host[a:a + m])
        return frame

    def export_views(self, block_ids: list[int], min_frame_bytes: int) -> list | None:
        """Blocks ``block_ids`` as the views layout (no copy; one frame per run of consecutive
        ids), or None when the pool is not on CPU or a run's frame would be under
        ``min_frame_bytes`` (many small frames cost more than the gather they save). The frames
        read the pool when they are sent: the caller must not let these blocks be freed or
        rewritten before the receiver has them."""
        if self.pool.device.type != "cpu" or not block_ids:
            return None
        runs = _runs(block_ids)
        if min(m for _, _, m in runs) * self.block_bytes < min_frame_bytes:
            return None
        host = self._host()
        desc = VIEWS_MAGIC + np.array([m for _, _, m in runs], dtype="<u4").tobytes()
        return [desc] + [host[a:a + m] for _, a, m in runs]

    def import_(self, block_ids: list[int], frames: list) -> None:
        """Scatter the frames' blocks into ``block_ids`` (in order): one copy per frame and run
        of consecutive ids, straight from the receive buffer into the pool (no staging copy, no
        concatenation)."""
        runs = self._views_runs(frames)
        if runs is not None:
            return self._import_views(block_ids, runs, frames[1:])
        parts = [self._frame(f) for f in frames]
        n = sum(p.shape[0] for p in parts)
        if n != len(block_ids):
            raise EngineError(f"import: frames hold {n} blocks, {len(block_ids)} block ids given")
        start = 0
        for p in parts:
            k = p.shape[0]
            ids = block_ids[start:start + k]
            if isinstance(p, np.ndarray):
                host = self._host()
                for j, a, m in _runs(ids):
                    np.copyto(host[a:a + m], p[j:j + m])
            else:
                idx = torch.tensor(ids, dtype=torch.long, device=self.pool.device)
                self.pool.index_copy_(0, idx, p.to(self.pool.device))
            start += k

    def _views_runs(self, frames: list) -> list[int] | None:
        """The run lengths of a views-layout export, or None for gathered frames (those are
        whole blocks, so never as small as a descriptor)."""
        if not frames or isinstance(frames[0], torch.Tensor):
            return None
        try:
            head = memoryview(frames[0]).cast("B")
        except TypeError:
            return None
        if head.nbytes >= self.block_bytes or bytes(head[:len(VIEWS_MAGIC)]) != VIEWS_MAGIC:
            return None
        body = head[len(VIEWS_MAGIC):]
        if body.nbytes % 4 or body.nbytes == 0:
            raise EngineError("import: malformed views descriptor")
        return [int(m) for m in np.frombuffer(body, dtype="<u4")]

    def _import_views(self, block_ids: list[int], runs: list[int], frames: list) -> None:
        if sum(runs) != len(block_ids) or min(runs) < 1:
            raise EngineError(f"import: runs {sum(runs)} blocks, {len(block_ids)} block ids given")
        if len(frames) != len(runs):
            raise EngineError(f"import: {len(frames)} view frames, expected {len(runs)}")
        if self.pool.device.type != "cpu":
            raise EngineError("import: views layout into a device pool")
        np_dtype = _NUMPY_VIEW[self.dtype][1]
        starts = np.cumsum([0] + runs[:-1]).tolist()
        size, host = self.block_bytes, self._host()
        for m, p, frame in zip(runs, starts, frames):
            buf = memoryview(frame).cast("B")
            if buf.nbytes != m * size:
                raise EngineError(f"import: view frame of {buf.nbytes} bytes, expected {m * size}")
            arr = np.frombuffer(buf, dtype=np_dtype).reshape(m, *self.block_shape)
            for j, a, k in _runs(block_ids[p:p + m]):
                np.copyto(host[a:a + k], arr[j:j + k])

    def _host(self) -> np.ndarray:
        """The CPU pool as numpy (bfloat16 as int16), a view."""
        return self.pool.view(_NUMPY_VIEW[self.dtype][0]).numpy()

    def _frame(self, frame):
        """A frame as [n, *block_shape] of our dtype: a numpy view of the receive buffer when
        the pool is on CPU, else a torch tensor."""
        if self.pool.device.type != "cpu":
            arr = self._frame_tensor(frame)
        elif not isinstance(frame, torch.Tensor):
            arr = self._frame_array(frame)
        elif frame.device.type == "cpu":
            arr = self._frame_tensor(frame).view(_NUMPY_VIEW[self.dtype][0]).numpy()
        else:
            arr = self._frame_tensor(frame)
        if arr.ndim != 6 or tuple(arr.shape[1:]) != self.block_shape:
            raise EngineError(f"import: frame shape {tuple(arr.shape)} does not match {self.block_shape}")
        return arr

    def _frame_array(self, frame) -> np.ndarray:
        """A numpy array or bytes-like frame as a numpy view of our (numpy) dtype."""
        np_dtype = _NUMPY_VIEW[self.dtype][1]
        if isinstance(frame, np.ndarray):
            if frame.dtype != np_dtype:
                raise EngineError(f"import: array dtype {frame.dtype}, expected {np.dtype(np_dtype)}")
            return frame
        try:
            buf = memoryview(frame).cast("B")
        except TypeError as exc:
            raise EngineError(f"import: unsupported frame type {type(frame).__name__}") from exc
        if buf.nbytes == 0 or buf.nbytes % self.block_bytes:
            raise EngineError(f"import: frame of {buf.nbytes} bytes is not whole blocks")
        return np.frombuffer(buf, dtype=np_dtype).reshape(-1, *self.block_shape)

    def _frame_tensor(self, frame) -> torch.Tensor:
        """A frame as a torch tensor of our dtype (device frames: the NCCL path)."""
        if isinstance(frame, torch.Tensor):
            if frame.dtype != self.dtype:
                raise EngineError(f"import: tensor dtype {frame.dtype}, engine uses {self.dtype}")
            return frame
        arr = self._frame_array(frame)
        with warnings.catch_warnings():  # read-only receive buffer: we only read from it
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(np.ascontiguousarray(arr)).view(self.dtype)


def _runs(ids: list[int]) -> list[tuple[int, int, int]]:
    """(position in ``ids``, first id, length) of each run of consecutive ids."""
    out, j = [], 0
    while j < len(ids):
        m = 1
        while j + m < len(ids) and ids[j + m] == ids[j] + m:
            m += 1
        out.append((j, ids[j], m))
        j += m
    return out


def _view_of(out, shape: tuple[int, ...], np_dtype) -> np.ndarray:
    """``shape`` of ``np_dtype`` over the start of ``out`` (a uint8 array), or a new array when
    ``out`` is None or too small."""
    nbytes = int(np.prod(shape)) * np.dtype(np_dtype).itemsize
    if out is None or out.nbytes < nbytes:
        return np.empty(shape, dtype=np_dtype)
    return out.reshape(-1)[:nbytes].view(np_dtype).reshape(shape)
