"""GPU-to-GPU block transfer with cupy NCCL send/recv, for two workers whose engines both hold
their KV cache in CUDA memory. cupy is imported lazily; nothing here runs on a CPU machine.

ZeroMQ stays the control path: a PRE_ALLOC whose first raw frame starts with ``MARKER`` carries,
instead of the blocks, a descriptor (msgpack: shape, dtype, and on a new pair the NCCL unique
id). The source then NCCL-sends the exported device tensor; the destination NCCL-receives it
into a fresh device buffer of that shape and imports it. One communicator per (source,
destination) pair, rank 0 = source, created through that first descriptor (both ends call
``NcclCommunicator(2, uid, rank)``, which blocks until the other joins: each end does it on a
thread, never on the event loop).

| frame 0 of a PRE_ALLOC         | meaning                                                  |
|--------------------------------|----------------------------------------------------------|
| anything else                  | ZeroMQ data plane: the frames are the blocks             |
| MARKER + msgpack{shape, dtype} | NCCL: the blocks follow on the pair's communicator       |
| MARKER + msgpack{…, uid}       | the same, and first create the communicator with ``uid`` |

Use it only where ``nccl_available()`` holds on both ends (cupy imports, a CUDA device is
present and the NCCL library loads): guard on ``cupy.cuda.is_available()``, not on the import.
"""

from __future__ import annotations

import threading

import msgpack

MARKER = b"LLX-NCCL1"
_DTYPES = ("float32", "float16", "bfloat16")


def nccl_available() -> bool:
    try:
        import cupy
        from cupy.cuda import nccl
    except Exception:  # not installed, or no CUDA runtime
        return False
    try:
        return bool(cupy.cuda.is_available() and nccl.available)
    except Exception:
        return False


def describe(shape, dtype: str, uid: bytes | None = None) -> bytes:
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype} cannot travel over NCCL here")
    body = {"shape": [int(x) for x in shape], "dtype": dtype}
    if uid is not None:
        body["uid"] = bytes(uid)
    return MARKER + msgpack.packb(body)


def parse(frame) -> dict | None:
    """The descriptor in ``frame``, or None for an ordinary block frame."""
    buf = bytes(memoryview(frame)[:len(MARKER)])
    if buf != MARKER:
        return None
    body = msgpack.unpackb(bytes(memoryview(frame)[len(MARKER):]))
    if not isinstance(body, dict) or body.get("dtype") not in _DTYPES \
            or not all(isinstance(x, int) and x >= 0 for x in body.get("shape", [None])):
        raise ValueError("bad NCCL descriptor")
    return body


class NcclPair:
    """One end of a two-rank communicator (rank 0 = source, rank 1 = destination)."""

    def __init__(self, rank: int, uid: bytes | None = None):
        from cupy.cuda import nccl

        self.rank = rank
        self.uid = uid if uid is not None else bytes(nccl.get_unique_id())
        self._comm = None
        self._lock = threading.Lock()

    def connect(self) -> None:
        """Blocks until the other rank joins: call it on a thread."""
        from cupy.cuda import nccl

        with self._lock:
            if self._comm is None:
                self._comm = nccl.NcclCommunicator(2, tuple(self.uid), self.rank)

    def send(self, tensor) -> None:
        """Send a contiguous CUDA tensor (torch) to the other rank; blocks until done."""
        import cupy
        from cupy.cuda import nccl

        self.connect()
        t = tensor.contiguous()
        stream = cupy.cuda.get_current_stream()
        self._comm.send(t.data_ptr(), t.numel() * t.element_size(), nccl.NCCL_UINT8, 1 - self.rank,
                        stream.ptr)
        stream.synchronize()

    def recv(self, shape, dtype: str, device):
        """A new CUDA tensor of ``shape``/``dtype`` filled from the other rank; blocks."""
        import cupy
        import torch
        from cupy.cuda import nccl

        self.connect()
        out = torch.empty(tuple(shape), dtype=getattr(torch, dtype), device=device)
        stream = cupy.cuda.get_current_stream()
        self._comm.recv(out.data_ptr(), out.numel() * out.element_size(), nccl.NCCL_UINT8,
                        1 - self.rank, stream.ptr)
        stream.synchronize()
        return out

    def close(self) -> None:
        if self._comm is not None:
            self._comm.destroy()
            self._comm = None
