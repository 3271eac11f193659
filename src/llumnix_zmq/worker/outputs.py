"""Per-step batched token output: one ``TokenBatch`` per engine step per frontend.

Each frontend binds a PULL socket; the worker keeps one PUSH per frontend address (connected
lazily) and never blocks on a slow or dead frontend: a full pipe drops the batch with a log
line (the frontend's request then times out or is resumed; a worker loop never stalls).
"""

from __future__ import annotations

import logging
from collections import defaultdict

import zmq

from ..protocol.codec import encode
from ..protocol.messages import TokenBatch, TokenDelta
from ..transport.sockets import make_socket

log = logging.getLogger(__name__)


class OutputSender:
    def __init__(self, ctx, instance_id: str, curve=None):
        self.ctx = zmq.Context.shadow(ctx.underlying) if hasattr(ctx, "underlying") else ctx
        self.instance_id = instance_id
        self.curve = curve
        self.socks: dict[str, zmq.Socket] = {}
        self.step = 0
        self.dropped = 0

    def _sock(self, address: str):
        sock = self.socks.get(address)
        if sock is None:
            sock = make_socket(self.ctx, zmq.PUSH, address, bind=False, curve=self.curve)
            self.socks[address] = sock
        return sock

    def send(self, deltas: list[TokenDelta], frontend_of) -> int:
        """Group ``deltas`` by frontend (``frontend_of(request_id)``) and send one batch each."""
        if not deltas:
            return 0
        self.step += 1
        groups: dict[str, list[TokenDelta]] = defaultdict(list)
        for d in deltas:
            address = frontend_of(d.request_id)
            if address:
                groups[address].append(d)
        for address, items in groups.items():
            frames = encode(TokenBatch(self.instance_id, self.step, tuple(items)))
            try:
                self._sock(address).send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self.dropped += 1
                log.warning("frontend %s not keeping up: dropped a batch of %d", address,
                            len(items))
        return len(groups)

    def forget(self, address: str) -> None:
        sock = self.socks.pop(address, None)
        if sock is not None:
            sock.close(linger=0)

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close(linger=0)
        self.socks.clear()
