"""Type-based dispatch (SGLang's TypeBasedDispatcher): a table from message class to handler.

``Router`` wraps a ROUTER socket: it decodes each message, looks up the handler, answers a
malformed or unknown message with an ``ErrorReply`` (and a log line) and keeps going. Handlers
run one at a time, in arrival order.

On a plain (non-asyncio) socket it receives without ``zmq.asyncio``: it takes every waiting
message with ``NOBLOCK`` and, only when none is left, waits for the socket's file descriptor
(a worker's request intake: no Future chain and no extra turn of the loop per message). ZeroMQ's
descriptor signals changes, not state: a send on the socket can take the signal of a message
that arrived meanwhile, so every send wakes the receive loop to look again. A reply that meets a
full pipe is retried for ``send_timeout_s`` (asyncio sockets wait the same way), then dropped."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

import zmq
import zmq.asyncio

from ..protocol.codec import DecodeError, decode, encode
from ..protocol.messages import ErrorCode, ErrorReply, Message
from .rpc import reply_key, send_routed

log = logging.getLogger(__name__)

Handler = Callable[[bytes, Message, list], Awaitable[Message | None] | Message | None]


class Router:
    def __init__(self, sock, handlers: dict[type[Message], Handler], name: str,
                 send_timeout_s: float = 2.0):
        self.sock = sock
        self.handlers = handlers
        self.name = name
        self.errors = 0
        self.send_timeout_s = send_timeout_s
        # a plain pyzmq socket: received from its fd; anything else (an asyncio socket, or a
        # stand-in with an awaitable send_multipart) is awaited as before
        self._plain = isinstance(sock, zmq.Socket) and not isinstance(sock, zmq.asyncio.Socket)
        self._wake: asyncio.Future | None = None  # the plain receive loop, waiting for the fd

    async def send(self, identity: bytes, msg: Message, raw=()) -> bool:
        if not self._plain:
            return await send_routed(self.sock, identity, msg, raw)
        frames = [identity, *encode(msg, raw)]
        deadline = asyncio.get_running_loop().time() + self.send_timeout_s
        try:
            while True:
                try:
                    self.sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
                    return True
                except zmq.Again:  # the peer's pipe is full (ROUTER_MANDATORY)
                    if asyncio.get_running_loop().time() >= deadline:
                        log.warning("%s: reply to %r dropped, its pipe stayed full", self.name,
                                    identity[:16])
                        return False
                    await asyncio.sleep(0.001)
                except zmq.ZMQError as exc:
                    if exc.errno == zmq.EHOSTUNREACH:
                        return False
                    raise
        finally:
            self._poke()

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def serve(self) -> None:
        if self._plain:
            return await self._serve_plain()
        while True:
            frames = await self.sock.recv_multipart(copy=False)
            await self.handle_frames(frames)

    async def _serve_plain(self) -> None:
        loop = asyncio.get_running_loop()
        fd = self.sock.getsockopt(zmq.FD)
        loop.add_reader(fd, self._poke)
        try:
            while True:
                try:
                    frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    self._wake = loop.create_future()
                    await self._wake
                    continue
                await self.handle_frames(frames)
        finally:
            self._wake = None
            loop.remove_reader(fd)

    async def handle_frames(self, frames) -> None:
        if len(frames) < 1:
            return
        identity = bytes(frames[0].buffer) if hasattr(frames[0], "buffer") else bytes(frames[0])
        try:
            msg, raw = decode(frames[1:])
        except DecodeError as exc:
            self.errors += 1
            log.warning("%s: malformed message from %r: %s", self.name, identity[:16], exc.message)
            await self.send(identity, exc.reply())
            return
        handler = self.handlers.get(type(msg))
        if handler is None:
            self.errors += 1
            log.warning("%s: no handler for %s from %r", self.name, type(msg).__name__, identity[:16])
            await self.send(
                identity,
                ErrorReply(ErrorCode.UNKNOWN_TYPE, f"{self.name} does not accept "
                           f"{type(msg).__name__}", ref_tag=msg.TAG, query_id=reply_key(msg) or 0),
            )
            return
        try:
            out = handler(identity, msg, raw)
            if asyncio.iscoroutine(out):
                out = await out
        except Exception as exc:  # a handler bug must not kill the loop
            self.errors += 1
            log.exception("%s: handler for %s failed", self.name, type(msg).__name__)
            out = ErrorReply(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}",
                             ref_tag=msg.TAG, query_id=reply_key(msg) or 0)
        if out is not None:
            await self.send(identity, out)
