"""Seams that double as fakes: an in-memory peer network and a worker stand-in, so the whole
migration protocol runs in one event loop with a FakeClock and no sockets.

``InMemoryNetwork`` encodes and decodes every message with the real codec (raw frames copied to
``bytes``, as the wire would: when sent, or with ``lazy_frames`` only when delivered, as libzmq
reads zero-copy frames whenever its I/O thread gets to them), delivers each node's input in
order through one consumer task (like the worker's Router), and can drop, duplicate, hold back
or reroute messages, or kill a node (everything to and from it vanishes).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Callable, Optional

from ...engine.base import EngineError, EngineRequest
from ...protocol.codec import decode, encode
from ...protocol.messages import (AbortRequest, ErrorCode, FinishReason, GenerateRequest,
                                  MigAbort, MigCommit, MigPreAlloc, Priority, SamplingParams,
                                  TokenDelta)

# filter(src, dst, msg) -> None (deliver) | "drop" | "dup" | "hold"
Filter = Callable[[str, str, object], Optional[str]]


class InMemoryNetwork:
    def __init__(self):
        self.nodes: dict[str, "FakeHost"] = {}
        self.dead: set[str] = set()
        self.filters: list[Filter] = []
        self.held: list[tuple[str, str, list]] = []
        self.log: list[tuple[str, str, str]] = []  # (src, dst, message type) as delivered
        self.lazy_frames = False  # read raw frames at delivery, not at send

    def peers(self, address: str) -> "InMemoryPeers":
        return InMemoryPeers(self, address)

    def kill(self, address: str) -> None:
        self.dead.add(address)

    def release_held(self) -> None:
        held, self.held = self.held, []
        for src, dst, frames in held:
            self._enqueue(src, dst, frames)

    def route(self, src: str, dst: str, frames: list) -> None:
        if src in self.dead or dst in self.dead or dst not in self.nodes:
            return
        msg, _ = decode(frames)
        for f in self.filters:
            verdict = f(src, dst, msg)
            if verdict == "drop":
                return
            if verdict == "hold":
                self.held.append((src, dst, frames))
                return
            if verdict == "dup":
                self._enqueue(src, dst, frames)
        self._enqueue(src, dst, frames)

    def _enqueue(self, src: str, dst: str, frames: list) -> None:
        if src in self.dead or dst in self.dead:
            return
        self.nodes[dst].inbox.put_nowait((src, frames))


class InMemoryPeers:
    """The PeerTransport of one node: requests go to a peer's inbox, replies to ``on_reply``."""

    def __init__(self, net: InMemoryNetwork, address: str):
        self.net = net
        self.address = address
        self.on_reply = lambda address, msg, raw: None
        self.bytes_sent = 0

    def set_on_reply(self, on_reply) -> None:
        self.on_reply = on_reply

    async def send(self, address: str, msg, raw=()) -> None:
        frames = encode(msg) + [f if self.net.lazy_frames else _wire_bytes(f) for f in raw]
        self.bytes_sent += sum(len(memoryview(f).cast("B")) for f in frames[2:])
        self.net.route(self.address, address, frames)

    async def close(self) -> None:
        return None


def _wire_bytes(frame) -> bytes:
    if hasattr(frame, "tobytes"):
        return frame.tobytes()
    return bytes(memoryview(frame).cast("B"))


@dataclass
class FakeHost:
    """What the coordinator needs of a WorkerService, and what tests inspect."""

    engine: object
    instance_id: str
    address: str
    clock: object
    net: InMemoryNetwork
    engine_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    frontend_of: dict = field(default_factory=dict)
    executor: object = None
    draining: bool = False
    outputs: list = field(default_factory=list)  # (frontend, TokenDelta) as emitted
    migration: object = None

    def __post_init__(self):
        self.work = asyncio.Event()
        self.report_now = asyncio.Event()
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.net.nodes[self.address] = self
        self._consumer = asyncio.get_running_loop().create_task(self._consume())

    # --- the worker's own paths --------------------------------------------------------
    async def add(self, rid: str, prompt, sampling: SamplingParams, frontend: str = "fe",
                  priority: Priority = Priority.NORMAL) -> None:
        msg = GenerateRequest(rid, frontend, tuple(prompt), sampling, priority)
        async with self.engine_lock:
            self.engine.add_request(EngineRequest(rid, list(prompt), sampling, msg.priority,
                                                  frontend))
            self.frontend_of[rid] = frontend
            self.migration.on_request_added(msg)

    async def abort(self, rid: str) -> bool:
        async with self.engine_lock:
            self.migration.on_request_gone(rid)
            found = self.engine.abort_request(rid)
            self.frontend_of.pop(rid, None)
        return found

    async def step(self):
        async with self.engine_lock:
            result = self.engine.step()
            self.migration.after_step(result)
        self.emit(result.deltas)
        return result

    def emit(self, deltas) -> None:
        for d in deltas:
            fe = self.frontend_of.get(d.request_id)
            if fe:
                self.outputs.append((fe, d))
            if d.finish_reason != FinishReason.NONE:
                self.frontend_of.pop(d.request_id, None)

    def fail(self, rid: str, frontend: str, code: ErrorCode, message: str) -> None:
        self.outputs.append((frontend, TokenDelta(rid, 0, (), FinishReason.ERROR, 0, message,
                                                  int(code))))

    def tokens(self, rid: str) -> list[int]:
        return [t for _, d in self.outputs if d.request_id == rid for t in d.token_ids]

    # --- the Router stand-in -----------------------------------------------------------
    async def _consume(self) -> None:
        while True:
            src, frames = await self.inbox.get()
            if self.address in self.net.dead:
                continue
            frames = frames[:2] + [f if isinstance(f, bytes) else _wire_bytes(f)
                                   for f in frames[2:]]  # lazy frames: read them now
            msg, raw = decode(frames)
            self.net.log.append((src, self.address, type(msg).__name__))
            if isinstance(msg, AbortRequest):
                await self.abort(msg.request_id)
                continue
            if isinstance(msg, (MigPreAlloc, MigCommit, MigAbort)):
                reply = await self.migration.on_peer_message(src.encode(), msg, raw)
            else:
                raise EngineError(f"unexpected {type(msg).__name__}")
            if reply is not None:
                self._reply(src, reply)

    def _reply(self, dst: str, reply) -> None:
        net = self.net
        if self.address in net.dead or dst in net.dead or dst not in net.nodes:
            return
        for f in net.filters:
            verdict = f(self.address, dst, reply)
            if verdict == "drop":
                return
        msg, raw = decode([bytes(f) for f in encode(reply)])
        net.log.append((self.address, dst, type(msg).__name__))
        peer = net.nodes[dst].migration.peers
        asyncio.get_running_loop().call_soon(peer.on_reply, self.address, msg, raw)

    async def close(self) -> None:
        self._consumer.cancel()
        await asyncio.gather(self._consumer, return_exceptions=True)
        if self.migration is not None:
            await self.migration.close()


def make_node(net: InMemoryNetwork, name: str, engine, clock, **cfg) -> FakeHost:
    """A worker stand-in named ``name`` (also its address) with a coordinator on ``net``."""
    from .coordinator import MigrationConfig, MigrationCoordinator

    host = FakeHost(engine, name, name, clock, net)
    host.migration = MigrationCoordinator(host, net.peers(name), MigrationConfig(**cfg), clock)
    return host


async def settle(rounds: int = 30) -> None:
    """Let every ready task run (deliveries, handlers, migration tasks) without time passing."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class Mesh:
    """Sim workers on an in-memory network under one FakeClock, driven step by step."""

    def __init__(self, **cfg):
        from ...clock import FakeClock

        self.clock = FakeClock()
        self.net = InMemoryNetwork()
        self.cfg = dict(timeout_s=0.5, last_stage_max_blocks=2, part_bytes=48)
        self.cfg.update(cfg)
        self.hosts: dict[str, FakeHost] = {}

    def node(self, name: str, num_blocks: int = 64, block_size: int = 4,
             max_batch_size: int = 256, engine=None, **cfg) -> FakeHost:
        """A worker named ``name``: a sim engine of that shape, or ``engine`` as given."""
        if engine is None:
            from ...engine.sim import SimConfig, SimEngine

            engine = SimEngine(SimConfig(block_size=block_size, num_blocks=num_blocks,
                                         max_batch_size=max_batch_size), self.clock)
        host = make_node(self.net, name, engine, self.clock, **{**self.cfg, **cfg})
        self.hosts[name] = host
        return host

    def alive(self) -> list[FakeHost]:
        return [h for name, h in self.hosts.items() if name not in self.net.dead]

    async def run(self, until: Callable[[], bool] = lambda: False, max_iters: int = 1000,
                  dt: float = 0.02) -> int:
        """Step every live engine that has work, deliver, tick timeouts, advance the clock;
        stop when ``until()`` holds or everything is idle. Returns the iterations used."""
        for i in range(max_iters):
            if until():
                return i
            for h in self.alive():
                if h.engine.has_work():
                    await h.step()
                await settle()
            for h in self.alive():
                await h.migration.tick()
            await settle()
            busy = any(h.engine.has_work() for h in self.alive())
            pending = any(h.migration.outgoing or h.migration.dest.sessions for h in self.alive())
            if not busy and not pending and not self.net.held:
                return i
            self.clock.advance(dt)
        raise AssertionError(f"mesh still busy after {max_iters} iterations")

    def stream(self, rid: str) -> list[int]:
        """What the frontend assembles: deltas from every node, deduplicated by start_index."""
        out: list[int] = []
        for d in sorted((d for h in self.hosts.values() for _, d in h.outputs
                         if d.request_id == rid), key=lambda d: d.start_index):
            if d.start_index > len(out):
                raise AssertionError(f"gap before {d.start_index} in {rid}")
            out.extend(d.token_ids[len(out) - d.start_index:])
        return out

    def deltas(self, rid: str) -> list:
        return [d for h in self.hosts.values() for _, d in h.outputs if d.request_id == rid]

    async def close(self) -> None:
        for h in self.hosts.values():
            await h.close()
