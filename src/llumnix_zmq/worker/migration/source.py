"""The source end of one migration: pre-copy rounds, suspend, final stage, COMMIT, free.

Rounds and stages. Round r (r < max_stages - 1, while the request keeps decoding) sends the
blocks filled since round r-1; the final round (after ``suspend``) sends the rest, including
the block being filled. A round goes out as one or more PRE_ALLOC messages ("stages", numbered
0, 1, 2… across the whole migration, each under ``part_bytes``), with at most ``window`` of
them unacknowledged. The final stages and the COMMIT are sent back to back (ZeroMQ keeps their
order on the one DEALER → ROUTER pipe; after zero-copy parts, once their ACKs are in: below),
so the downtime holds one round trip, not two. The
final round keeps at most ``window`` stages unacknowledged too: each stage's send buffer is
reused once its ACK is in (dataplane.SendBuffers), so a long final round cycles through a few
buffers instead of allocating one per part.

Zero-copy parts: see parts.py.

Outcome rule (the COMMIT race):

| source state | event                                   | action                              |
|--------------|-----------------------------------------|-------------------------------------|
| PRECOPY      | ACK                                     | next round, or suspend              |
| PRECOPY      | ABORT, ErrorReply, ACK timeout          | tell the peer ABORT; keep running   |
| PRECOPY      | request finished / aborted / preempted  | tell the peer ABORT; nothing else   |
| SUSPENDED    | any failure before COMMIT is sent       | tell the peer ABORT; resume         |
| COMMITTING   | COMMITTED                               | remove the request here; DONE       |
| COMMITTING   | ABORT for this migration id             | resume here (the destination never  |
|              |                                         | committed and never will: tombstone)|
| COMMITTING   | no answer for ``commit_retry_s``        | send the same COMMIT again          |
| COMMITTING   | destination silent ``timeout_s`` (dead) | resume here (see below)             |
| COMMITTING   | client abort / disconnect               | wait for the outcome; if COMMITTED, |
|              |                                         | forward the abort to the destination|

The source never resumes on a mere missing COMMITTED: only a MigAbort (the destination's
definitive "not committed") or a destination that has been silent for ``timeout_s`` (dead)
does that. In the second case a destination that had committed and then died has lost the
request with it, so resuming here keeps it running exactly once; the client's stream stays
exact because the frontend drops tokens it already has (TokenDelta.start_index).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING


from ...engine.base import EngineError, EngineRequest
from ...protocol.messages import (AbortRequest, ErrorCode, ErrorReply, MigAbort, MigAck,
                                  MigCommit, MigCommitted, RequestMoved,
                                  RequestState)
from .parts import PartSender, _future
from .states import SrcState, source_fsm

if TYPE_CHECKING:
    from .coordinator import MigrationCoordinator

log = logging.getLogger(__name__)


class MigrationFailed(Exception):
    """Why a migration ended without moving the request. ``from_peer``: the destination said so
    (no need to tell it ABORT); ``gone``: the request left the source (nothing to resume)."""

    def __init__(self, code: ErrorCode, reason: str, *, from_peer: bool = False,
                 gone: bool = False):
        super().__init__(f"{code.name}: {reason}")
        self.code = code
        self.reason = reason
        self.from_peer = from_peer
        self.gone = gone


class _Timeout(Exception):
    pass


class SourceMigration(PartSender):
    def __init__(self, coord: "MigrationCoordinator", request_id: str, migration_id: int,
                 peer: str, peer_id: str, queued: bool = False, num_tokens: int = 0):
        self.c = coord
        self.rid = request_id
        self.mid = migration_id
        self.peer = peer
        self.peer_id = peer_id
        self.queued = queued
        self.num_tokens = num_tokens  # at the start; the destination sizes its refusal on it
        self.contacted = False  # any message sent to the destination
        self.fsm = source_fsm(f"mig-out {request_id}#{migration_id:x}")
        self.sent = 0  # blocks the destination holds
        self.next_stage = 0
        self.rounds = 0
        self.acks: dict[int, asyncio.Future] = {}
        self.commit_future: asyncio.Future | None = None
        self.state: RequestState | None = None
        self.gone = ""  # why the request left the source mid-way ("" while it is here)
        self.abort_after_commit = False
        per_token = getattr(coord.engine, "kv_bytes_per_token", 0) or 4  # refined by exports
        per_block = per_token * coord.engine.block_size
        self.blocks_per_part = max(1, coord.cfg.part_bytes // per_block)
        self.view_blocks = coord.cfg.view_part_bytes // per_block  # 0: no zero-copy parts
        self.viewed: list[asyncio.Future] = []  # ACKs of the stages sent as views of the cache
        self.view_stages: list[int] = []  # and their stage numbers (kept, for figures and tests)
        self.part_sizes: list[int] = []  # bytes of each stage's frames, in order
        now = coord.clock.now()
        self.started_at = now
        self.last_heard = now
        self.suspended_at: float | None = None
        self.ended_at: float | None = None
        self.bytes_sent = 0
        self.round_stats: list[tuple[int, float]] = []  # pre-copy rounds: (bytes, seconds)
        self.final_started_at: float | None = None  # the final round's first export
        self.export_s = 0.0  # wall time of the export calls, all rounds
        self.lent: dict[int, object] = {}  # stage -> send buffer, until its ACK
        self.outcome: MigrationFailed | None = None
        self._pending: dict[asyncio.Future, float] = {}  # future -> deadline (clock time)
        self.task: asyncio.Task | None = None

    @property
    def state_name(self) -> SrcState:
        return self.fsm.state

    # --- events from the coordinator -----------------------------------------------------
    def on_reply(self, msg) -> None:
        self.last_heard = self.c.clock.now()
        if isinstance(msg, MigAck):
            buf = self.lent.pop(msg.stage, None)
            if buf is not None:  # the destination has the bytes: libzmq is done with them
                self.c.send_buffers.give(buf)
            fut = self.acks.get(msg.stage)
            if fut is not None and not fut.done():
                fut.set_result(msg.block_ids)
        elif isinstance(msg, MigAbort):
            self._fail_all(MigrationFailed(msg.code, msg.reason or "destination aborted",
                                           from_peer=True))
        elif isinstance(msg, MigCommitted):
            if self.commit_future is not None and not self.commit_future.done():
                self.commit_future.set_result(msg)
            else:
                log.warning("%s: COMMITTED before any COMMIT: ignored", self.fsm.name)
        elif isinstance(msg, ErrorReply):
            self.on_error_reply(msg)

    def on_error_reply(self, msg: ErrorReply) -> None:
        definitive = msg.code == ErrorCode.UNKNOWN_TYPE  # the peer cannot migrate at all
        if self.fsm.state is SrcState.COMMITTING and not definitive:
            log.warning("%s: peer error during COMMIT (%s: %s): retrying", self.fsm.name,
                        msg.code.name, msg.message)
            return
        self._fail_all(MigrationFailed(msg.code, msg.message, from_peer=definitive))

    def on_gone(self, reason: str) -> None:
        """The request left the source (aborted, finished, preempted): called under the lock."""
        if self.gone or self.fsm.state in (SrcState.DONE, SrcState.ABORTED):
            return
        self.gone = reason
        if self.fsm.state is SrcState.COMMITTING:
            self.abort_after_commit = True  # the outcome decides who must drop it
            return
        self._fail_all(MigrationFailed(ErrorCode.NOT_FOUND, reason, gone=True))

    def expire(self, now: float) -> None:
        for fut, deadline in list(self._pending.items()):
            if deadline <= now and not fut.done():
                fut.set_exception(_Timeout())

    def _fail_all(self, exc: MigrationFailed) -> None:
        if self.outcome is None:
            self.outcome = exc
        futs = list(self.acks.values()) + [self.commit_future] + list(self._pending)
        for fut in futs:
            if fut is not None and not fut.done():
                fut.set_exception(exc)

    async def _await(self, fut: asyncio.Future, timeout: float, retry: bool = False):
        """The future's result; after ``timeout`` (clock time, fired by ``expire``) a TIMEOUT
        failure, or ``_Timeout`` when the caller retries."""
        if self.outcome is not None and not fut.done():
            fut.set_exception(self.outcome)
        self._pending[fut] = self.c.clock.now() + timeout
        try:
            return await fut
        except _Timeout:
            if retry:
                raise
            raise MigrationFailed(ErrorCode.TIMEOUT, f"no answer from {self.peer_id} within "
                                  f"{timeout:.1f}s") from None
        finally:
            self._pending.pop(fut, None)

    # --- the protocol --------------------------------------------------------------------
    async def run(self) -> None:
        try:
            if self.queued:
                await self._dequeue()
            else:
                await self._precopy()
                await self._final()
            await self._commit()
            await self._finish()
        except MigrationFailed as exc:
            await self._rollback(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: leave the request running here, loudly
            log.exception("%s failed", self.fsm.name)
            await self._rollback(MigrationFailed(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"))
        finally:
            self.ended_at = self.c.clock.now()
            self.lent.clear()  # unacknowledged: libzmq may still read them, never reuse
            self.c.forget_outgoing(self)

    def _check_running(self) -> None:
        """Under the lock: the request is still here and decoding, else the migration ends."""
        if self.outcome is not None:
            raise self.outcome
        eng = self.c.engine
        if not eng.has_request(self.rid):
            self.gone = self.gone or "finished"
        elif self.rid not in {c.request_id for c in eng.migration_candidates()}:
            self.gone = self.gone or "preempted"
        if self.gone:
            raise MigrationFailed(ErrorCode.NOT_FOUND, self.gone, gone=True)

    async def _precopy(self) -> None:
        cfg = self.c.cfg
        for rnd in range(max(0, cfg.max_stages - 1)):
            async with self.c.lock:
                self._check_running()
                full = self.c.engine.num_full_blocks(self.rid)
                total = len(self.c.engine.request_block_ids(self.rid))
            if total - self.sent <= cfg.last_stage_max_blocks or full <= self.sent:
                return
            self.fsm.transition(SrcState.PRECOPY)
            self.rounds += 1
            t0, b0 = self.c.clock.now(), self.bytes_sent
            acks = await self._send_blocks(self.sent, full, running=True)
            for fut in acks:
                await self._await(fut, cfg.timeout_s)
            self.sent = full
            self.round_stats.append((self.bytes_sent - b0, self.c.clock.now() - t0))

    async def _final(self) -> None:
        eng = self.c.engine
        async with self.c.lock:
            self._check_running()
            self.fsm.transition(SrcState.SUSPENDED)
            eng.suspend(self.rid)
            self.suspended_at = self.c.clock.now()
            total = len(eng.request_block_ids(self.rid))
            self.state = eng.export_state(self.rid)
            # the final stages go out under this same lock hold: released between parts, the
            # lock would go to the engine loop first, adding a whole step per part to downtime
            self.rounds += 1
            self.final_started_at = self.c.clock.now()
            await self._send_blocks(self.sent, total, running=False)  # ACKs: not waited for
        self.sent = total

    async def _dequeue(self) -> None:
        async with self.c.lock:
            if self.outcome is not None:
                raise self.outcome
            self.state = self.c.queued_state(self.rid)  # raises MigrationFailed if it cannot
            self.fsm.transition(SrcState.DEQUEUED)
            self.c.engine.abort_request(self.rid)  # leaves the queue, no output; frontend kept

    def _num_tokens(self) -> int:
        if self.state is not None:
            return len(self.state.prompt_token_ids) + len(self.state.output_token_ids)
        return self.num_tokens

    async def _commit(self) -> None:
        cfg = self.c.cfg
        await self._views_acked()
        self.fsm.transition(SrcState.COMMITTING)
        self.commit_future = _future()
        if self.outcome is not None:  # a final-stage refusal raced the transition
            raise self.outcome
        msg = MigCommit(self.mid, self.rid, self.c.instance_id, self.state)
        while True:
            self.contacted = True
            await self.c.peers.send(self.peer, msg)
            try:
                await self._await(self.commit_future, cfg.commit_retry_s, retry=True)
                return
            except _Timeout:
                if self.c.clock.now() - self.last_heard >= cfg.timeout_s:
                    raise MigrationFailed(ErrorCode.INSTANCE_DEAD,
                                          f"destination {self.peer_id} silent for "
                                          f"{cfg.timeout_s:.1f}s") from None
                self.fsm.transition(SrcState.COMMITTING)  # retry, same ids
                self.commit_future = _future()

    async def _finish(self) -> None:
        async with self.c.lock:
            if not self.queued and self.c.engine.has_request(self.rid):
                self.c.engine.remove_request(self.rid)
            frontend = self.c.host.frontend_of.pop(self.rid, None) or self.state.frontend_address
            self.fsm.transition(SrcState.DONE)
        notify = getattr(self.c.host, "notify_frontend", None)
        if frontend and notify is not None:  # the frontend learns the new owner from us too
            notify(frontend, RequestMoved(self.rid, self.peer_id,
                                          len(self.state.output_token_ids)))
        self.c.on_moved(self)
        now = self.c.clock.now()
        down = (now - self.suspended_at) * 1e3 if self.suspended_at is not None else 0.0
        log.info("%s committed on %s: %.1f ms in all, %.1f ms suspended, %d rounds, %d stages, "
                 "%d bytes", self.fsm.name, self.peer_id, (now - self.started_at) * 1e3, down,
                 self.rounds, self.next_stage, self.bytes_sent)
        if self.abort_after_commit:
            log.info("%s: client left during COMMIT: aborting on %s", self.fsm.name, self.peer_id)
            await self.c.peers.send(self.peer, AbortRequest(self.rid, "client left during migration"))

    async def _rollback(self, exc: MigrationFailed) -> None:
        state = self.fsm.state
        self.outcome = self.outcome or exc
        if not exc.from_peer and self.contacted:
            try:
                await self.c.peers.send(self.peer, MigAbort(self.mid, self.rid, exc.code, exc.reason))
            except Exception:  # best effort: the peer may be gone
                log.debug("%s: could not send ABORT", self.fsm.name, exc_info=True)
        async with self.c.lock:
            self._restore(state)
            self.fsm.transition(SrcState.ABORTED)
        self.c.wake()
        level = logging.INFO if exc.gone or exc.from_peer else logging.WARNING
        log.log(level, "%s aborted in %s: %s", self.fsm.name, state.name, exc)

    def _restore(self, state: SrcState) -> None:
        """Under the lock: the request continues here (unless it is gone)."""
        eng, host = self.c.engine, self.c.host
        if self.gone:
            return
        if self.queued and state in (SrcState.DEQUEUED, SrcState.COMMITTING):
            s = self.state
            try:
                eng.add_request(EngineRequest(s.request_id, list(s.prompt_token_ids), s.sampling,
                                              s.priority, s.frontend_address,
                                              list(s.output_token_ids), s.arrival_time))
            except EngineError as err:
                host.frontend_of.pop(self.rid, None)
                host.fail(self.rid, s.frontend_address, ErrorCode.INTERNAL,
                          f"migration failed and the request could not be re-queued: {err}")
        elif state in (SrcState.SUSPENDED, SrcState.COMMITTING) and eng.has_request(self.rid):
            eng.resume(self.rid)
