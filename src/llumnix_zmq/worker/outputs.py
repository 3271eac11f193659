"""Per-step batched token output: one ``TokenBatch`` per engine step per frontend.

First tokens go ahead: when a step produced the first token of some requests and further tokens
of others, those first tokens travel in a small batch of their own, sent just before the step's
main batch (same step number). A new request's time to first token then does not include
encoding and decoding everyone else's next token (~60 deltas: a few hundred microseconds on
each side); the frontend applies and writes that small batch before it reads the next one.

Each frontend binds a PULL socket; the worker keeps one PUSH per frontend address (connected
lazily) and never blocks on a slow or dead frontend: a full pipe drops the batch with a log
line (the frontend's request then times out or is resumed; a worker loop never stalls).
"""

from __future__ import annotations

import asyncio
import logging

import zmq
import zmq.asyncio
from zmq.utils.monitor import recv_monitor_message

from ..protocol.codec import encode
from ..protocol.messages import TokenBatch, TokenDelta
from ..transport.sockets import make_socket, plain_context

log = logging.getLogger(__name__)


class OutputSender:
    """``on_gone(address)`` is called when a frontend's connection drops and does not come back
    within ``gone_after_s`` (its process died: its clients are gone too)."""

    def __init__(self, ctx, instance_id: str, curve=None, on_gone=None, gone_after_s: float = 2.0):
        self.ctx = plain_context(ctx)
        self.instance_id = instance_id
        self.curve = curve
        self.on_gone = on_gone
        self.gone_after_s = gone_after_s
        self.socks: dict[str, zmq.Socket] = {}
        self.watchers: dict[str, asyncio.Task] = {}
        self.step = 0
        self.dropped = 0

    def _sock(self, address: str):
        sock = self.socks.get(address)
        if sock is None:
            sock = make_socket(self.ctx, zmq.PUSH, address, bind=False, curve=self.curve)
            self.socks[address] = sock
            if self.on_gone is not None:
                self.watchers[address] = asyncio.get_running_loop().create_task(
                    self._watch(address, sock), name=f"watch {address}")
        return sock

    async def _watch(self, address: str, sock) -> None:
        mon = zmq.asyncio.Socket.from_socket(
            sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED))
        timer: asyncio.TimerHandle | None = None
        loop = asyncio.get_running_loop()
        try:
            while True:
                event = (await recv_monitor_message(mon))["event"]
                if event == zmq.EVENT_DISCONNECTED and timer is None:
                    timer = loop.call_later(self.gone_after_s, self._gone, address)
                elif event == zmq.EVENT_CONNECTED and timer is not None:
                    timer.cancel()
                    timer = None
        except (asyncio.CancelledError, zmq.ZMQError):
            pass
        finally:
            if timer is not None:
                timer.cancel()
            mon.close(linger=0)

    def _gone(self, address: str) -> None:
        self.forget(address)
        self.on_gone(address)

    def usable(self, address: str) -> bool:
        """Whether tokens can be pushed to ``address`` (a malformed endpoint cannot be)."""
        try:
            self._sock(address)
        except zmq.ZMQError:
            return False
        return True

    def send(self, deltas: list[TokenDelta], frontend_of) -> int:
        """Group ``deltas`` by frontend (``frontend_of(request_id)``) and send one batch each;
        a step's first tokens (requests just prefilled) go ahead, in their own batch per
        frontend, before any frontend's batch of the other requests' next tokens."""
        if not deltas:
            return 0
        self.step += 1
        # the first tokens leave before the rest is even grouped (one tight pass finds them)
        new = [d for d in deltas if d.start_index == 0 and d.token_ids]
        first = _group(new, frontend_of)
        for address, items in first.items():
            self._send_batch(address, items)
        rest = _group([d for d in deltas if d.start_index != 0 or not d.token_ids]
                      if new else deltas, frontend_of)
        for address, items in rest.items():
            self._send_batch(address, items)
        return len(first.keys() | rest.keys())

    def _send_batch(self, address: str, items: list[TokenDelta]) -> None:
        frames = encode(TokenBatch(self.instance_id, self.step, tuple(items)))
        try:
            self._sock(address).send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.dropped += 1
            log.warning("frontend %s not keeping up: dropped a batch of %d", address, len(items))
        except zmq.ZMQError as exc:  # an address no socket can connect to: never fatal
            self.dropped += 1
            log.error("frontend address %r unusable (%s): dropped a batch of %d", address, exc,
                      len(items))

    def notify(self, address: str, msg) -> bool:
        """A control message on the token channel (e.g. RequestMoved); never blocks."""
        try:
            self._sock(address).send_multipart(encode(msg), flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            log.warning("frontend %s not keeping up: dropped %s", address, type(msg).__name__)
            return False

    def forget(self, address: str) -> None:
        watcher = self.watchers.pop(address, None)
        if watcher is not None:
            watcher.cancel()
        sock = self.socks.pop(address, None)
        if sock is not None:
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
            sock.close(linger=0)

    def close(self) -> None:
        for address in list(self.socks):
            self.forget(address)


def _group(deltas: list[TokenDelta], frontend_of) -> dict[str, list[TokenDelta]]:
    """``deltas`` by frontend address, in order; a delta with no frontend is dropped."""
    groups: dict[str, list[TokenDelta]] = {}
    for d in deltas:
        address = frontend_of(d.request_id)
        if address:
            groups.setdefault(address, []).append(d)
    return groups
