"""The migration coordinator: the object WorkerService holds as ``self.migration``.

It owns both ends on one worker: ``outgoing`` (one SourceMigration per request leaving, never
two for one request) and ``dest`` (sessions of requests arriving). The worker calls it:

| hook                         | when                                  | lock held |
|------------------------------|---------------------------------------|-----------|
| start_command(MigrateCommand)| order from the scheduler              | no        |
| on_peer_message(id, msg, raw)| MigPreAlloc / MigCommit / MigAbort in | no        |
| on_reply(address, msg, raw)  | MigAck / MigAbort / MigCommitted back | no (sync) |
| on_request_added(msg)        | a GenerateRequest was queued          | yes       |
| on_request_gone(rid)         | abort / client disconnect             | yes       |
| after_step(result)           | after each engine step                | yes       |
| annotate(load)               | each load report                      | no        |
| tick()                       | every ``tick_s`` (timeouts, expiry)   | no        |

Engine calls all happen under ``host.engine_lock``; the heavy ones (export, import) go through
``run_engine`` so the torch engine runs them on its executor thread, not on the event loop.
All timeouts read ``clock`` and fire from ``tick()``, so tests drive them with a FakeClock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass

from ...engine.base import EngineError
from ...protocol.messages import (AbortRequest, ErrorCode, ErrorReply, FinishReason,
                                  GenerateRequest, InstanceLoad, MigAbort, MigCommit,
                                  MigrateCommand, MigrateCommandReply, MigPreAlloc, RequestState)
from ...scheduler.policy.selection import select_requests
from .dataplane import SendBuffers
from .destination import Destination
from .source import MigrationFailed, SourceMigration
from .states import SrcState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MigrationConfig:
    policy: str = "shortest-running"
    max_concurrent: int = 4  # per direction
    last_stage_max_blocks: int = 16
    max_stages: int = 3  # rounds in all, the last one after suspend (1 = blocking copy)
    timeout_s: float = 10.0  # an ACK, a silent peer, an idle incoming session
    part_bytes: int = 8 << 20  # max bytes of blocks in one PRE_ALLOC frame
    window: int = 4  # PRE_ALLOC stages in flight during pre-copy
    view_part_bytes: int = 16 << 20  # zero-copy parts (views of the cache); 0: always gather
    view_min_frame_bytes: int = 64 << 10  # smaller view frames (short runs): gather instead
    commit_retry_s: float = 0.0  # 0: min(0.5, timeout_s / 5)
    tick_s: float = 0.05
    tombstone_ttl_s: float = 0.0  # 0: max(60, 6 * timeout_s)
    data_plane: str = "zmq"  # zmq | nccl (both engines on CUDA; see nccl.py)

    def __post_init__(self):
        if self.commit_retry_s <= 0:
            object.__setattr__(self, "commit_retry_s", min(0.5, self.timeout_s / 5))
        if self.tombstone_ttl_s <= 0:
            object.__setattr__(self, "tombstone_ttl_s", max(60.0, 6 * self.timeout_s))
        if self.max_stages < 1 or self.max_concurrent < 1 or self.window < 1:
            raise ValueError("max_stages, max_concurrent and window must be >= 1")
        if self.data_plane not in ("zmq", "nccl"):
            raise ValueError(f"unknown data plane {self.data_plane!r} (zmq | nccl)")

    @classmethod
    def from_worker(cls, cfg, **overrides) -> "MigrationConfig":
        return cls(policy=cfg.migration_policy, max_concurrent=cfg.max_concurrent_migrations,
                   last_stage_max_blocks=cfg.last_stage_max_blocks, max_stages=cfg.max_stages,
                   timeout_s=cfg.migration_timeout_s,
                   data_plane=getattr(cfg, "migration_data_plane", "zmq"), **overrides)


class MigrationCoordinator:
    def __init__(self, host, peers, cfg: MigrationConfig | None = None, clock=None):
        self.host = host
        self.engine = host.engine
        self.lock: asyncio.Lock = host.engine_lock
        self.clock = clock or host.clock
        self.cfg = cfg or MigrationConfig()
        self.peers = peers
        peers.set_on_reply(self.on_reply)
        self.send_buffers = SendBuffers(self.cfg.part_bytes, keep=self.cfg.window)
        self.outgoing: dict[str, SourceMigration] = {}
        self.dest = Destination(self)
        self.moved: OrderedDict[str, tuple[str, float]] = OrderedDict()  # rid -> (peer, expiry)
        self.origins: dict[str, GenerateRequest] = {}  # queued requests' own state
        self.history: deque[SourceMigration] = deque(maxlen=256)
        self.adoptions: deque[tuple[str, float]] = deque(maxlen=256)  # (request id, clock)
        self.counts = {"started": 0, "committed": 0, "aborted": 0, "adopted": 0}
        self._ids = itertools.count(secrets.randbits(40) << 20)
        self._tick_task: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()  # fire-and-forget sends, kept referenced
        self.nccl_out: dict[str, object] = {}  # peer address -> NcclPair (rank 0)
        self.nccl_in: dict[str, object] = {}  # source id -> NcclPair (rank 1)

    @classmethod
    def for_service(cls, service) -> "MigrationCoordinator":
        from .dataplane import ZmqPeers

        return cls(service, ZmqPeers(service.ctx, getattr(service, "client_keys", None)),
                   MigrationConfig.from_worker(service.cfg))

    @property
    def instance_id(self) -> str:
        return self.host.instance_id

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self._tick_task = asyncio.get_running_loop().create_task(self._tick_loop(),
                                                                 name="migration-tick")

    async def close(self) -> None:
        tasks = [m.task for m in self.outgoing.values() if m.task is not None]
        if self._tick_task is not None:
            tasks.append(self._tick_task)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.peers.close()
        for pair in [*self.nccl_out.values(), *self.nccl_in.values()]:
            pair.close()

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.tick_s)
            await self.tick()

    async def tick(self) -> None:
        now = self.clock.now()
        for m in list(self.outgoing.values()):
            m.expire(now)
        await self.dest.expire(now)
        while self.moved and next(iter(self.moved.values()))[1] <= now:
            self.moved.popitem(last=False)

    # --- helpers for both ends -----------------------------------------------------------
    @property
    def on_cuda(self) -> bool:
        dev = getattr(self.engine, "device", None)
        return getattr(dev, "type", "") == "cuda"

    def uses_nccl(self) -> bool:
        return self.cfg.data_plane == "nccl" and self.on_cuda
    async def run_engine(self, fn, *args):
        executor = getattr(self.host, "executor", None)
        if executor is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    def wake(self) -> None:
        self.host.work.set()
        self.host.report_now.set()

    def queued_state(self, rid: str) -> RequestState:
        """Under the lock: the state a queued request moves with (it has no KV)."""
        eng = self.engine
        if not self._is_queued(rid):
            raise MigrationFailed(ErrorCode.NOT_FOUND, f"{rid} is no longer queued here", gone=True)
        try:
            return eng.export_state(rid)
        except EngineError:
            pass  # the sim exports only admitted requests: use what the frontend sent
        o = self.origins.get(rid)
        tokens = next((r.num_tokens for r in eng.load().requests if r.request_id == rid), -1)
        if o is None or tokens != len(o.prompt_token_ids) + len(o.output_token_ids):
            raise MigrationFailed(ErrorCode.BAD_REQUEST, f"{rid}: the engine cannot export a "
                                  "queued request that has already produced tokens")
        frontend = self.host.frontend_of.get(rid, o.frontend_address)
        return RequestState(rid, frontend, o.prompt_token_ids, o.output_token_ids, o.sampling,
                            o.priority, 0, b"", o.arrival_time)

    def _is_queued(self, rid: str) -> bool:
        eng = self.engine
        return (eng.has_request(rid) and not eng.request_block_ids(rid)
                and rid not in {c.request_id for c in eng.migration_candidates()})

    # --- source side ---------------------------------------------------------------------
    async def start_command(self, msg: MigrateCommand) -> MigrateCommandReply:
        refusal = self._command_refusal(msg)
        if refusal:
            return MigrateCommandReply(msg.command_id, False, (), refusal)
        capacity = self.cfg.max_concurrent - len(self.outgoing)
        async with self.lock:
            chosen, reasons = self._choose(msg, capacity)
            for rid, queued, tokens in chosen:
                m = SourceMigration(self, rid, next(self._ids), msg.destination_address,
                                    msg.destination_id, queued, tokens)
                self.outgoing[rid] = m
                self.counts["started"] += 1
                m.task = asyncio.get_running_loop().create_task(m.run(), name=f"mig-out {rid}")
        if not chosen:
            return MigrateCommandReply(msg.command_id, False, (),
                                       "; ".join(reasons) or "no running request to migrate")
        ids = tuple(rid for rid, _, _ in chosen)
        log.info("migrating %s to %s (%s)", ", ".join(ids), msg.destination_id, msg.reason)
        self.host.report_now.set()
        return MigrateCommandReply(msg.command_id, True, ids, "; ".join(reasons))

    def _command_refusal(self, msg: MigrateCommand) -> str:
        if msg.source_id and msg.source_id != self.instance_id:
            return f"this is {self.instance_id}, not {msg.source_id}"
        if not msg.destination_address or msg.destination_id == self.instance_id \
                or msg.destination_address == getattr(self.host, "address", None):
            return "no valid destination"
        if len(self.outgoing) >= self.cfg.max_concurrent:
            return f"{len(self.outgoing)} migrations already in flight (max_concurrent_migrations)"
        return ""

    def _choose(self, msg: MigrateCommand, capacity: int):
        cands = {c.request_id: c for c in self.engine.migration_candidates()
                 if c.request_id not in self.outgoing}
        chosen, reasons = [], []
        if not msg.request_ids:
            picked = select_requests(cands.values(), min(msg.num_requests, capacity),
                                     self.cfg.policy, reason=msg.reason,
                                     max_blocks=msg.max_blocks or None)
            return [(c.request_id, False, c.num_tokens) for c in picked], reasons
        for rid in dict.fromkeys(msg.request_ids):
            if len(chosen) >= capacity:
                reasons.append(f"{rid}: max_concurrent_migrations reached")
            elif rid in self.outgoing:
                reasons.append(f"{rid}: already migrating")
            elif rid in cands:
                chosen.append((rid, False, cands[rid].num_tokens))
            elif self._is_queued(rid):
                chosen.append((rid, True, 0))
            elif self.engine.has_request(rid):
                reasons.append(f"{rid}: still in prefill")
            else:
                reasons.append(f"{rid}: not on {self.instance_id}")
        return chosen, reasons

    def on_reply(self, address: str, msg, raw) -> None:
        if isinstance(msg, ErrorReply):
            self._on_error_reply(address, msg)
            return
        m = self.outgoing.get(getattr(msg, "request_id", ""))
        if m is None or m.mid != getattr(msg, "migration_id", None):
            log.info("stale %s for %s from %s dropped", type(msg).__name__,
                     getattr(msg, "request_id", "?"), address)
            return
        if m.peer != address:
            log.warning("%s for %s from %s, not its destination %s: refused",
                        type(msg).__name__, m.rid, address, m.peer)
            return
        m.on_reply(msg)

    def _on_error_reply(self, address: str, msg: ErrorReply) -> None:
        targets = [m for m in self.outgoing.values() if m.peer == address
                   and (m.rid == msg.request_id or (not msg.request_id
                                                    and msg.code == ErrorCode.UNKNOWN_TYPE))]
        if not targets:
            log.warning("peer %s: %s %s", address, msg.code.name, msg.message)
        for m in targets:
            m.on_reply(msg)

    def forget_outgoing(self, m: SourceMigration) -> None:
        if self.outgoing.get(m.rid) is m:
            del self.outgoing[m.rid]
        self.history.append(m)
        self.counts["committed" if m.fsm.state is SrcState.DONE else "aborted"] += 1
        self.host.report_now.set()

    def on_moved(self, m: SourceMigration) -> None:
        self.origins.pop(m.rid, None)
        self.moved[m.rid] = (m.peer, self.clock.now() + self.cfg.tombstone_ttl_s)
        self.moved.move_to_end(m.rid)

    # --- destination side ----------------------------------------------------------------
    async def on_peer_message(self, identity: bytes, msg, raw):
        if isinstance(msg, MigPreAlloc):
            return await self.dest.on_prealloc(identity, msg, raw)
        if isinstance(msg, MigCommit):
            return await self.dest.on_commit(identity, msg, raw)
        if isinstance(msg, MigAbort):
            return await self.dest.on_abort(identity, msg, raw)
        return ErrorReply(ErrorCode.UNKNOWN_TYPE, f"not a migration message: {type(msg).__name__}",
                          ref_tag=msg.TAG)

    def on_adopted(self, msg: MigCommit) -> None:
        self.counts["adopted"] += 1
        self.adoptions.append((msg.request_id, self.clock.now()))
        self.moved.pop(msg.request_id, None)  # it came back (A -> B -> A)
        st = msg.state
        if st.num_computed_tokens == 0:
            self.origins[st.request_id] = GenerateRequest(
                st.request_id, st.frontend_address, st.prompt_token_ids, st.sampling,
                st.priority, st.output_token_ids, st.arrival_time)

    # --- worker hooks --------------------------------------------------------------------
    def on_request_added(self, msg: GenerateRequest) -> None:
        self.origins[msg.request_id] = msg

    def on_request_gone(self, rid: str) -> None:
        """Under the lock, before the worker drops ``rid`` (abort, client gone)."""
        self.origins.pop(rid, None)
        m = self.outgoing.get(rid)
        if m is not None:
            m.on_gone("aborted")
            return
        moved = self.moved.pop(rid, None)
        if moved is not None:  # it left with a migration: the abort follows it
            task = asyncio.get_running_loop().create_task(
                self.peers.send(moved[0], AbortRequest(rid, "aborted after migration")))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def after_step(self, result) -> None:
        """Under the lock: end pre-copies whose request finished or was preempted."""
        finished = {d.request_id for d in result.deltas if d.finish_reason != FinishReason.NONE}
        for rid in finished:
            self.origins.pop(rid, None)
        active = [m for m in self.outgoing.values()
                  if not m.queued and m.fsm.state in (SrcState.NEW, SrcState.PRECOPY)]
        if not active:
            return
        running = {c.request_id for c in self.engine.migration_candidates()}
        for m in active:
            if m.rid in finished or not self.engine.has_request(m.rid):
                m.on_gone("finished")
            elif m.rid not in running:
                m.on_gone("preempted")

    def annotate(self, load: InstanceLoad) -> InstanceLoad:
        out = self.outgoing
        reqs = load.requests
        if out:
            reqs = tuple(dataclasses.replace(r, migrating=True) if r.request_id in out else r
                         for r in reqs)
        return dataclasses.replace(load, requests=reqs, num_migrating_out=len(out),
                                   num_migrating_in=len(self.dest.sessions))
