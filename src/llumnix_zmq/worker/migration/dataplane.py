"""The ZeroMQ data plane between workers: one DEALER per peer address (source side) to the
peer's ROUTER ``recv_from_peers`` (destination side, served by WorkerService's Router).

A stage travels as one multipart message ``[tag][msgpack MigPreAlloc][block frame…]``: the block
frames are the engine's exported buffers, sent with ``copy=False`` (libzmq reads them in place;
the source keeps no other reference) and received with ``copy=False``, then handed to the engine
as memoryviews into libzmq's own receive buffers (no Python-side copy or allocation). Each frame
stays under ``part_bytes`` (the ROUTER drops peers sending a frame over ``MAXMSGSIZE``), so a big
round is split into several PRE_ALLOC messages by the source.

Zero-copy parts: where the engine can (``export_block_views``), a full part is sent as views of
the source's cache itself (no gather copy, libzmq reads the pool); see parts.py for why those
bytes cannot change before the destination has them. Other parts are gathered:

Send buffers (``SendBuffers``): engines that can (``export_blocks_into``) gather each stage into
a buffer lent from a small free list, taken back when that stage's ACK arrives (the destination
has the bytes, so libzmq has finished reading them); a stage that never gets its ACK keeps its
buffer (pyzmq holds it until libzmq lets go) and the list makes a new one. So a long transfer
writes into the same ``window`` already-mapped buffers instead of faulting in fresh pages per
part. Receive buffers are libzmq's own (one allocation per frame, freed once imported); glibc
hands the same pages back for the next frame of the same size (measured: ~8 % of a 377 MB
transfer's pages fault, the first few parts'), so they are reused as well.

Replies (MigAck, MigAbort, MigCommitted, ErrorReply) come back on the same DEALER and go to
``on_reply(address, msg, raw)``. ``InMemoryPeers`` (worker/migration/testing.py) is the same
interface without sockets, for unit tests.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Protocol, Sequence

import numpy as np
import zmq
import zmq.asyncio

from ...protocol.codec import DecodeError, decode, encode
from ...protocol.messages import Message
from ...transport.sockets import CurveKeys, make_socket

log = logging.getLogger(__name__)

OnReply = Callable[[str, Message, list], None]


class PeerTransport(Protocol):
    def set_on_reply(self, on_reply: OnReply) -> None: ...

    async def send(self, address: str, msg: Message, raw: Sequence = ()) -> None: ...

    async def close(self) -> None: ...


class ZmqPeers:
    """DEALER sockets to peer workers, created on first use, each with a reply reader task."""

    def __init__(self, ctx: zmq.asyncio.Context, curve: CurveKeys | None = None):
        self.ctx = ctx
        self.curve = curve
        self.socks: dict[str, zmq.asyncio.Socket] = {}
        self.tasks: dict[str, asyncio.Task] = {}
        self.on_reply: OnReply = lambda address, msg, raw: None
        self.bytes_sent = 0

    def set_on_reply(self, on_reply: OnReply) -> None:
        self.on_reply = on_reply

    def _sock(self, address: str) -> zmq.asyncio.Socket:
        sock = self.socks.get(address)
        if sock is None:
            sock = make_socket(self.ctx, zmq.DEALER, address, bind=False, curve=self.curve)
            self.socks[address] = sock
            self.tasks[address] = asyncio.get_running_loop().create_task(
                self._read(address, sock), name=f"peer {address}")
        return sock

    async def send(self, address: str, msg: Message, raw: Sequence = ()) -> None:
        frames = encode(msg, raw)
        await self._sock(address).send_multipart(frames, copy=False)
        self.bytes_sent += sum(_nbytes(f) for f in raw)

    async def _read(self, address: str, sock) -> None:
        try:
            while True:
                frames = await sock.recv_multipart(copy=False)
                try:
                    msg, raw = decode(frames)
                except DecodeError as exc:
                    log.warning("malformed reply from peer %s: %s", address, exc.message)
                    continue
                try:
                    self.on_reply(address, msg, raw)
                except Exception:  # a bug in one reply must not stop the reader
                    log.exception("migration reply handler failed for %s", type(msg).__name__)
        except (asyncio.CancelledError, zmq.ZMQError):
            return

    async def close(self) -> None:
        for t in self.tasks.values():
            t.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        for sock in self.socks.values():
            sock.close(linger=0)
        self.socks.clear()
        self.tasks.clear()


class SendBuffers:
    """A free list of ``size``-byte export buffers (uint8 arrays), at most ``keep`` kept."""

    def __init__(self, size: int, keep: int):
        self.size = size
        self.keep = keep
        self.free: list[np.ndarray] = []
        self.made = 0

    def take(self) -> np.ndarray:
        if self.free:
            return self.free.pop()
        self.made += 1
        return np.empty(self.size, dtype=np.uint8)

    def give(self, buf: np.ndarray) -> None:
        """Back from a stage the destination acknowledged (so nothing reads it any more)."""
        if len(self.free) < self.keep and buf.nbytes == self.size:
            self.free.append(buf)


def as_buffers(raw: Sequence) -> list:
    """Received frames as buffers the engines import (zmq.Frame → its memoryview)."""
    return [f.buffer if isinstance(f, zmq.Frame) else f for f in raw]


def _nbytes(frame) -> int:
    n = getattr(frame, "nbytes", None)
    if n is not None:
        return int(n)
    return len(memoryview(frame).cast("B"))


def frames_nbytes(frames: Sequence) -> int:
    return sum(_nbytes(f) for f in frames)
