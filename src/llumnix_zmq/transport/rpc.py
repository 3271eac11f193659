"""Request-reply over a DEALER with per-query ids and timeouts, and typed send/recv helpers.

A reply is matched to its query by ``query_id`` (or ``command_id``); an ``ErrorReply`` or a
timeout surfaces as ``RpcError`` to the caller, never as a dead loop.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Callable

import zmq
import zmq.asyncio

from ..protocol.codec import DecodeError, decode, encode
from ..protocol.messages import ErrorCode, ErrorReply, Message

log = logging.getLogger(__name__)


class RpcError(Exception):
    def __init__(self, code: ErrorCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def reply_key(msg: Message) -> int | None:
    for name in ("query_id", "command_id"):
        value = getattr(msg, name, None)
        if isinstance(value, int) and value:
            return value
    return None


class RpcClient:
    """Owns one DEALER; ``call`` sends a message built with a fresh query id and awaits the reply.
    Messages that are not replies go to ``on_message`` (e.g. orders from the scheduler)."""

    def __init__(self, sock, on_message: Callable[[Message, list], None] | None = None):
        self.sock = sock
        self.on_message = on_message
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._task: asyncio.Task | None = None

    def next_id(self) -> int:
        return next(self._ids)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._recv_loop())

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(RpcError(ErrorCode.INTERNAL, "client closed"))
        self.sock.close(linger=0)

    async def send(self, msg: Message, raw=()) -> None:
        await self.sock.send_multipart(encode(msg, raw), copy=False)

    def send_nowait(self, msg: Message, raw=()) -> bool:
        """Send without waiting; False (and nothing queued) when the peer's pipe is full or
        absent — used for heartbeats and reports, which the next period replaces."""
        return send_nowait(self.sock, encode(msg, raw))

    async def call(self, build: Callable[[int], Message], timeout: float) -> Message:
        qid = self.next_id()
        fut = asyncio.get_running_loop().create_future()
        self._pending[qid] = fut
        try:
            await self.send(build(qid))
            reply = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise RpcError(ErrorCode.TIMEOUT, f"no reply within {timeout:.3f}s") from None
        finally:
            self._pending.pop(qid, None)
        if isinstance(reply, ErrorReply):
            raise RpcError(reply.code, reply.message)
        return reply

    async def _recv_loop(self) -> None:
        while True:
            frames = await self.sock.recv_multipart(copy=False)
            try:
                msg, raw = decode(frames)
            except DecodeError as exc:
                log.warning("dropping malformed message from peer: %s", exc.message)
                continue
            key = reply_key(msg)
            fut = self._pending.get(key) if key is not None else None
            if fut is not None and not fut.done():
                fut.set_result(msg)
            elif self.on_message is not None:
                try:
                    self.on_message(msg, raw)
                except Exception:
                    log.exception("handler failed for %s", type(msg).__name__)
            else:
                log.debug("unsolicited %s dropped", type(msg).__name__)


def send_nowait(sock, frames) -> bool:
    """Send without waiting: False (nothing sent, nothing queued) when the pipe is full or
    absent. On an asyncio socket this goes through the socket itself, never a sync shadow: a
    send processes the socket's pending commands and clears its FD's readiness, so a message
    that had just arrived would raise no event and a receive already waiting on the socket
    would never wake. pyzmq's own non-blocking send re-checks the events for its receivers
    (tests/transport/test_send_nowait.py)."""
    if isinstance(sock, zmq.asyncio.Socket):
        fut = sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        if not fut.done():  # behind sends already waiting: it goes out after them (or not)
            fut.add_done_callback(_retrieve)
            return True
        return fut.exception() is None
    try:
        sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        return True
    except zmq.Again:
        return False


def _retrieve(fut: asyncio.Future) -> None:
    """A queued nowait send that failed (EAGAIN) is dropped, as when it fails at once."""
    if not fut.cancelled() and fut.exception() is not None:
        log.debug("nowait send dropped: %s", fut.exception())


async def send_routed(sock, identity: bytes, msg: Message, raw=()) -> bool:
    """Send on a ROUTER to ``identity``; False if the peer is gone (ROUTER_MANDATORY)."""
    try:
        await sock.send_multipart([identity, *encode(msg, raw)], copy=False)
        return True
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EHOSTUNREACH:
            return False
        raise
