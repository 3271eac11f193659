"""Read and write whole KV blocks of vLLM's registered KV tensors (one per attention layer).

vLLM's CPU (and GPU) KV tensors index blocks on their first dimension (``kv[block_id]`` is one
block of one layer: K and V, all heads, all slots). A migration frame carries n blocks of every
layer as one contiguous numpy byte array ``[n, num_layers, bytes_per_block_per_layer]``, so
the receiver checks one size and writes each layer with one ``index_copy_``. Only engines with
the same model, dtype and block size can read each other's frames (the migration protocol
pairs instances of one model).
"""

from __future__ import annotations

import numpy as np
import torch


class KVBlockIO:
    def __init__(self, layers: list[torch.Tensor]):
        if not layers:
            raise RuntimeError("no KV tensors registered (is the migration connector loaded?)")
        self.layers = layers
        shapes = {tuple(t.shape[1:]) for t in layers}
        dtypes = {t.dtype for t in layers}
        if len(shapes) != 1 or len(dtypes) != 1:
            raise RuntimeError(f"KV layers differ: {shapes} {dtypes}")
        self.block_shape = shapes.pop()
        self.dtype = dtypes.pop()
        self.layer_block_bytes = layers[0][0].numel() * layers[0].element_size()
        self.block_bytes = self.layer_block_bytes * len(layers)

    def read(self, block_ids: list[int]) -> np.ndarray:
        """Blocks ``block_ids`` (in order) of every layer, as a fresh uint8 array."""
        idx = torch.tensor(block_ids, dtype=torch.long)
        n = len(block_ids)
        out = torch.empty((n, len(self.layers), self.layer_block_bytes), dtype=torch.uint8)
        for i, t in enumerate(self.layers):
            out[:, i] = t.index_select(0, idx).reshape(n, -1).view(torch.uint8)
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
        idx = torch.tensor(block_ids, dtype=torch.long)
        for i, t in enumerate(self.layers):
            src = data[:, i].contiguous().view(self.dtype).reshape((n, *self.block_shape))
            t.index_copy_(0, idx, src)
