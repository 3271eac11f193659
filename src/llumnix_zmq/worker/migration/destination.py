"""The destination end: reserve and import each stage, commit, or release.

Sessions are keyed by (migration id, request id) and bound to the ROUTER identity of the peer
that opened them. Answers:

| message                 | no session, no tombstone | session (RECEIVING)       | tombstone            |
|-------------------------|--------------------------|---------------------------|----------------------|
| PRE_ALLOC stage 0       | open (or refuse: ABORT   | same stage again: the     | its outcome again:   |
|                         | NO_SPACE / BUSY / dup.)  | same ACK (idempotent)     | COMMITTED or ABORT   |
| PRE_ALLOC stage k > 0   | ABORT STALE              | next stage: reserve +     | (idem)               |
|                         |                          | import + ACK; a gap:      |                      |
|                         |                          | ABORT STALE               |                      |
| COMMIT                  | queued request (0 tokens | import_request → COMMITTED| (idem): a duplicated |
|                         | computed): add_request → | (or ABORT + release if    | or late COMMIT is    |
|                         | COMMITTED; else ABORT    | the engine refuses)       | idempotent           |
|                         | STALE                    |                           |                      |
| ABORT (from the source) | ignored                  | release, tombstone ABORTED| ignored              |
| any, from another peer  | -                        | ErrorReply UNKNOWN_PEER,  | its outcome          |
| (identity / source id)  |                          | session untouched         |                      |

Invariant: this side answers ABORT for a migration only once it can never commit it (the
tombstone is written first), so a source that gets ABORT after sending COMMIT may resume.
A session silent for ``timeout_s`` (the source died) is released and tombstoned ABORTED.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...engine.base import EngineError, EngineRequest
from ...engine.blocks import blocks_for_tokens
from ...protocol.messages import (ErrorCode, ErrorReply, MigAbort, MigAck, MigCommit,
                                  MigCommitted, MigPreAlloc)
from .dataplane import as_buffers, frames_nbytes
from .states import DstState, destination_fsm

if TYPE_CHECKING:
    from .coordinator import MigrationCoordinator

log = logging.getLogger(__name__)

MAX_TOMBSTONES = 10_000


@dataclass
class Tombstone:
    state: DstState
    code: ErrorCode
    reason: str
    expires: float


@dataclass
class Incoming:
    migration_id: int
    request_id: str
    source_id: str
    identity: bytes
    last_heard: float
    fsm: object = None
    block_ids: list[int] = field(default_factory=list)
    acks: dict[int, tuple[int, ...]] = field(default_factory=dict)
    next_stage: int = 0
    bytes_in: int = 0  # block bytes imported
    import_s: float = 0.0  # wall time of the import calls
    imported_at: float = 0.0  # clock when the latest stage was in the cache

    @property
    def key(self) -> tuple[int, str]:
        return (self.migration_id, self.request_id)


class Destination:
    def __init__(self, coord: "MigrationCoordinator"):
        self.c = coord
        self.sessions: dict[tuple[int, str], Incoming] = {}
        self.tombstones: OrderedDict[tuple[int, str], Tombstone] = OrderedDict()
        self.history: deque[Incoming] = deque(maxlen=256)  # ended sessions, for figures

    # --- answers -------------------------------------------------------------------------
    def _outcome(self, key, t: Tombstone):
        if t.state is DstState.COMMITTED:
            return MigCommitted(key[0], key[1], self.c.instance_id)
        return MigAbort(key[0], key[1], t.code, t.reason)

    def _bury(self, key, state: DstState, code: ErrorCode = ErrorCode.STALE, reason: str = ""):
        self.tombstones[key] = Tombstone(state, code, reason,
                                         self.c.clock.now() + self.c.cfg.tombstone_ttl_s)
        self.tombstones.move_to_end(key)
        while len(self.tombstones) > MAX_TOMBSTONES:
            self.tombstones.popitem(last=False)

    def _refuse(self, key, code: ErrorCode, reason: str) -> MigAbort:
        log.info("incoming migration %s#%x refused: %s %s", key[1], key[0], code.name, reason)
        self._bury(key, DstState.ABORTED, code, reason)
        return MigAbort(key[0], key[1], code, reason)

    def _abort_locked(self, s: Incoming, code: ErrorCode, reason: str) -> MigAbort:
        """Under the lock: release the reservation and tombstone the session."""
        if s.block_ids:
            self.c.engine.release_blocks(s.block_ids)
            s.block_ids = []
        s.fsm.transition(DstState.ABORTED)
        self.sessions.pop(s.key, None)
        self.history.append(s)
        self.c.wake()
        return self._refuse(s.key, code, reason)

    def _foreign(self, s: Incoming, identity: bytes, source_id: str | None) -> bool:
        return identity != s.identity or (source_id is not None and source_id != s.source_id)

    @staticmethod
    def _unknown_peer(msg, rid: str) -> ErrorReply:
        return ErrorReply(ErrorCode.UNKNOWN_PEER, "migration message from a peer that does not "
                          "own this migration", rid, msg.TAG)

    # --- PRE_ALLOC -----------------------------------------------------------------------
    async def on_prealloc(self, identity: bytes, msg: MigPreAlloc, raw) -> object:
        key = (msg.migration_id, msg.request_id)
        t = self.tombstones.get(key)
        if t is not None:
            return self._outcome(key, t)
        s = self.sessions.get(key)
        if s is None:
            if msg.stage != 0:
                return self._refuse(key, ErrorCode.STALE, f"unknown migration (stage {msg.stage})")
            async with self.c.lock:
                return await self._open_locked(identity, key, msg, raw)
        if self._foreign(s, identity, msg.source_id):
            return self._unknown_peer(msg, msg.request_id)
        if msg.stage in s.acks:
            return MigAck(msg.migration_id, msg.request_id, msg.stage, s.acks[msg.stage])
        s.last_heard = self.c.clock.now()
        async with self.c.lock:
            if self.sessions.get(key) is not s:  # expired or aborted while we waited
                return self._outcome(key, self.tombstones[key]) if key in self.tombstones \
                    else self._refuse(key, ErrorCode.STALE, "session gone")
            if msg.stage != s.next_stage or msg.block_start != len(s.block_ids):
                return self._abort_locked(s, ErrorCode.STALE, f"stage {msg.stage} at block "
                                          f"{msg.block_start}, expected {s.next_stage} at "
                                          f"{len(s.block_ids)}")
            return await self._import_locked(s, msg, raw)

    async def _open_locked(self, identity: bytes, key, msg: MigPreAlloc, raw) -> object:
        """Under the lock: admit (or refuse) a new incoming migration and import stage 0."""
        if key in self.sessions or key in self.tombstones:  # a duplicate raced us to the lock
            return await self.on_prealloc_again(identity, key, msg)
        refusal = self._admission(msg)
        if refusal is not None:
            return self._refuse(key, *refusal)
        s = Incoming(msg.migration_id, msg.request_id, msg.source_id, identity,
                     self.c.clock.now())
        s.fsm = destination_fsm(f"mig-in {msg.request_id}#{msg.migration_id:x}")
        self.sessions[key] = s
        return await self._import_locked(s, msg, raw)

    async def on_prealloc_again(self, identity: bytes, key, msg: MigPreAlloc) -> object:
        t = self.tombstones.get(key)
        if t is not None:
            return self._outcome(key, t)
        s = self.sessions[key]
        if self._foreign(s, identity, msg.source_id):
            return self._unknown_peer(msg, msg.request_id)
        return MigAck(msg.migration_id, msg.request_id, msg.stage, s.acks.get(msg.stage, ()))

    def _admission(self, msg: MigPreAlloc) -> tuple[ErrorCode, str] | None:
        eng, cfg = self.c.engine, self.c.cfg
        if self.c.host.draining:
            return ErrorCode.BUSY, f"{self.c.instance_id} is draining"
        if len(self.sessions) >= cfg.max_concurrent:
            return ErrorCode.BUSY, f"{len(self.sessions)} incoming migrations already"
        if self._holds(msg.request_id):
            return ErrorCode.BAD_REQUEST, f"request {msg.request_id} already here"
        need = blocks_for_tokens(max(msg.num_tokens, 1), eng.block_size)
        if need > eng.num_free_blocks():
            return ErrorCode.NO_SPACE, f"{need} blocks needed, {eng.num_free_blocks()} free"
        return None

    def _holds(self, rid: str) -> bool:
        return self.c.engine.has_request(rid) or any(s.request_id == rid
                                                     for s in self.sessions.values())

    async def _import_locked(self, s: Incoming, msg: MigPreAlloc, raw) -> object:
        eng = self.c.engine
        s.fsm.transition(DstState.RECEIVING)
        if msg.num_blocks < 0:
            return self._abort_locked(s, ErrorCode.MALFORMED, f"{msg.num_blocks} blocks")
        ids = eng.reserve_blocks(msg.num_blocks)
        if ids is None:
            return self._abort_locked(s, ErrorCode.NO_SPACE,
                                      f"{msg.num_blocks} blocks needed, {eng.num_free_blocks()} free")
        t0 = self.c.clock.now()
        try:
            frames = await self._nccl_frames(s, raw) if self.c.on_cuda and raw else None
            frames = frames or as_buffers(raw)
            await self.c.run_engine(eng.import_blocks, ids, frames)
        except (EngineError, ValueError) as exc:
            eng.release_blocks(ids)
            return self._abort_locked(s, ErrorCode.MALFORMED, f"import failed: {exc}")
        s.imported_at = self.c.clock.now()
        s.import_s += s.imported_at - t0
        s.bytes_in += frames_nbytes(frames)
        s.block_ids += ids
        s.acks[msg.stage] = tuple(ids)
        s.next_stage += 1
        return MigAck(msg.migration_id, msg.request_id, msg.stage, tuple(ids))

    async def _nccl_frames(self, s: Incoming, raw) -> list | None:
        """The blocks of a PRE_ALLOC that announces an NCCL transfer (nccl.py), else None."""
        from . import nccl

        desc = nccl.parse(as_buffers(raw[:1])[0])
        if desc is None:
            return None
        pair = self.c.nccl_in.get(s.source_id)
        if pair is None or "uid" in desc:
            pair = self.c.nccl_in[s.source_id] = nccl.NcclPair(1, desc["uid"])
        tensor = await asyncio.to_thread(pair.recv, desc["shape"], desc["dtype"],
                                         self.c.engine.device)
        return [tensor]

    # --- COMMIT --------------------------------------------------------------------------
    async def on_commit(self, identity: bytes, msg: MigCommit, raw) -> object:
        key = (msg.migration_id, msg.request_id)
        t = self.tombstones.get(key)
        if t is not None:
            return self._outcome(key, t)
        if msg.state.request_id != msg.request_id:
            return self._refuse(key, ErrorCode.MALFORMED, "state of another request")
        s = self.sessions.get(key)
        if s is None:
            if msg.state.num_computed_tokens != 0:
                return self._refuse(key, ErrorCode.STALE, "COMMIT for an unknown migration")
            return await self._commit_queued(key, msg)
        if self._foreign(s, identity, msg.source_id):
            return self._unknown_peer(msg, msg.request_id)
        s.last_heard = self.c.clock.now()
        async with self.c.lock:
            if self.sessions.get(key) is not s:
                return self._outcome(key, self.tombstones[key]) if key in self.tombstones \
                    else self._refuse(key, ErrorCode.STALE, "session gone")
            if self.c.engine.has_request(msg.request_id):
                return self._abort_locked(s, ErrorCode.BAD_REQUEST, "request already here")
            try:
                await self.c.run_engine(self.c.engine.import_request, msg.state, s.block_ids)
            except EngineError as exc:
                return self._abort_locked(s, ErrorCode.MALFORMED, f"import_request: {exc}")
            s.fsm.transition(DstState.COMMITTED)
            del self.sessions[key]
            self.history.append(s)
            self._adopt(key, msg)
        return MigCommitted(msg.migration_id, msg.request_id, self.c.instance_id)

    async def _commit_queued(self, key, msg: MigCommit) -> object:
        st = msg.state
        if self.c.host.draining:
            return self._refuse(key, ErrorCode.BUSY, f"{self.c.instance_id} is draining")
        fsm = destination_fsm(f"mig-in {msg.request_id}#{msg.migration_id:x}")
        async with self.c.lock:
            if self._holds(st.request_id):
                return self._refuse(key, ErrorCode.BAD_REQUEST, "request already here")
            try:
                self.c.engine.add_request(EngineRequest(
                    st.request_id, list(st.prompt_token_ids), st.sampling, st.priority,
                    st.frontend_address, list(st.output_token_ids), st.arrival_time))
            except EngineError as exc:
                return self._refuse(key, ErrorCode.BAD_REQUEST, f"add_request: {exc}")
            fsm.transition(DstState.COMMITTED)
            self._adopt(key, msg)
        return MigCommitted(msg.migration_id, msg.request_id, self.c.instance_id)

    def _adopt(self, key, msg: MigCommit) -> None:
        """Under the lock: the request is ours now; its tokens go to its frontend from here."""
        self.c.host.frontend_of[msg.request_id] = msg.state.frontend_address
        self._bury(key, DstState.COMMITTED)
        self.c.on_adopted(msg)
        self.c.wake()

    # --- ABORT from the source, and expiry -----------------------------------------------
    async def on_abort(self, identity: bytes, msg: MigAbort, raw) -> object:
        key = (msg.migration_id, msg.request_id)
        s = self.sessions.get(key)
        if s is None:
            if key not in self.tombstones:  # never opened (or long gone): never open it now
                self._bury(key, DstState.ABORTED, msg.code, msg.reason)
            return None
        if self._foreign(s, identity, None):
            return self._unknown_peer(msg, msg.request_id)
        async with self.c.lock:
            if self.sessions.get(key) is s:
                self._abort_locked(s, msg.code, f"source aborted: {msg.reason}")
        return None

    async def expire(self, now: float) -> None:
        timeout = self.c.cfg.timeout_s
        for s in [s for s in self.sessions.values() if now - s.last_heard >= timeout]:
            async with self.c.lock:
                if self.sessions.get(s.key) is s:
                    log.warning("incoming migration %s#%x: source %s silent for %.1fs: released "
                                "%d blocks", s.request_id, s.migration_id, s.source_id, timeout,
                                len(s.block_ids))
                    self._abort_locked(s, ErrorCode.TIMEOUT, "source silent")
        while self.tombstones:
            key, t = next(iter(self.tombstones.items()))
            if t.expires > now:
                break
            del self.tombstones[key]

    def num_blocks_reserved(self) -> int:
        return sum(len(s.block_ids) for s in self.sessions.values())
