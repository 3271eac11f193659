"""Receive on a ZeroMQ socket straight from the event loop's readiness callback.

``zmq.asyncio`` hands each message to a coroutine through a Future: a readiness callback
receives it, resolves the Future, and the coroutine resumes on the *next* turn of the loop.
On a hot receive path (the frontend's token intake) that is a loop turn and a pile of
bookkeeping per message before the message is even looked at. ``SocketReader`` calls
``on_frames(frames)`` from the readiness callback itself, for each message waiting, on a plain
(non-asyncio) socket that nothing else receives on.

ZeroMQ's file descriptor is edge-triggered: it signals once when messages arrive and not again
for messages already waiting, so the reader drains the socket (``NOBLOCK`` until ``Again``)
every time, and when it stops early it schedules itself to go on. It stops early after
``budget`` messages (other callbacks get their turn) and when ``on_frames`` returns True: the
caller wants what it just scheduled to run before the next message is handled (the frontend
lets a new request's handler write its first token before the step's other tokens are applied).

    reader = SocketReader(sock, on_frames)   # on_frames(frames) -> bool | None
    reader.start()                           # inside the running loop
    ...
    reader.close()                           # before sock.close()

A failing ``on_frames`` is logged and the reader goes on with the next message.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

import zmq
import zmq.asyncio

log = logging.getLogger(__name__)


class SocketReader:
    def __init__(self, sock: zmq.Socket, on_frames: Callable[[list], bool | None],
                 budget: int = 64):
        if isinstance(sock, zmq.asyncio.Socket):
            raise TypeError("SocketReader needs a plain zmq.Socket (nothing else may receive)")
        if budget < 1:
            raise ValueError("budget must be >= 1")
        self.sock = sock
        self.on_frames = on_frames
        self.budget = budget
        self.failures = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd = -1
        self._pending = False  # a continuation is scheduled

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._fd = self.sock.getsockopt(zmq.FD)
        self._loop.add_reader(self._fd, self._on_readable)
        self._continue()  # messages that arrived before the reader was registered

    def close(self) -> None:
        if self._loop is not None and self._fd >= 0:
            self._loop.remove_reader(self._fd)
        self._fd = -1

    def _continue(self) -> None:
        if not self._pending and self._loop is not None:
            self._pending = True
            self._loop.call_soon(self._resume)

    def _on_readable(self) -> None:
        if not self._pending:  # else the scheduled continuation drains, in its turn (a pause
            self._drain()      # lets what the handler scheduled run first)

    def _resume(self) -> None:
        self._pending = False
        self._drain()

    def _drain(self) -> None:
        if self._fd < 0:
            return
        for _ in range(self.budget):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:  # closed under us: nothing more to read
                log.debug("reader stopped: %s", exc)
                self.close()
                return
            try:
                pause = self.on_frames(frames)
            except Exception:  # a handler bug must not stop the intake
                self.failures += 1
                log.exception("message handler failed")
                pause = False
            if pause:
                break
        self._continue()  # stopped early: messages may be waiting and the fd will not say so
