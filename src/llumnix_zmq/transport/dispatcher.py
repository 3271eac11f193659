"""Type-based dispatch (SGLang's TypeBasedDispatcher): a table from message class to handler.

``Router`` wraps a ROUTER socket: it decodes each message, looks up the handler, answers a
malformed or unknown message with an ``ErrorReply`` (and a log line) and keeps going."""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from ..protocol.codec import DecodeError, decode
from ..protocol.messages import ErrorCode, ErrorReply, Message
from .rpc import reply_key, send_routed

log = logging.getLogger(__name__)

Handler = Callable[[bytes, Message, list], Awaitable[Message | None] | Message | None]


class Router:
    def __init__(self, sock, handlers: dict[type[Message], Handler], name: str):
        self.sock = sock
        self.handlers = handlers
        self.name = name
        self.errors = 0

    async def send(self, identity: bytes, msg: Message, raw=()) -> bool:
        return await send_routed(self.sock, identity, msg, raw)

    async def serve(self) -> None:
        while True:
            frames = await self.sock.recv_multipart(copy=False)
            await self.handle_frames(frames)

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
