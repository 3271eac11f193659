"""Instance registry: who is registered, their last load report, and liveness.

Instance lifecycle (explicit state machine)::

    (register) -> ACTIVE -> DRAINING -> (removed on deregister/stop)
                    │           │
                    └──> DEAD <─┘  (missed heartbeats; removed right after)

DRAINING follows the worker's own ``load.draining`` both ways, except while a drain or undrain
the scheduler ordered (``order_drain``) is not yet confirmed by a report: reports sent before
the worker read the order still carry the old flag, and must not undo it (an undrain followed by
a stale "draining" report left an active worker DRAINING for good: never dispatched to, and
blocking every later scale-in as a drain in progress).

| pending order | report says          | state                         |
|---------------|----------------------|-------------------------------|
| none          | draining / not       | DRAINING / ACTIVE             |
| drain         | draining             | DRAINING; order confirmed     |
| drain         | not draining (stale) | DRAINING (as ordered)         |
| undrain       | not draining         | ACTIVE; order confirmed       |
| undrain       | draining (stale)     | ACTIVE (as ordered)           |

Everything here is rebuilt from worker registrations and reports after a scheduler restart:
a report from an unknown instance is answered with UNKNOWN_PEER and the worker re-registers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from ..common.fsm import StateMachine
from ..protocol.messages import (
    InstanceInfo,
    InstanceLoad,
    InstanceState,
    Priority,
    RegisterWorker,
    RequestLoad,
)

log = logging.getLogger(__name__)

TRANSITIONS = {
    InstanceState.ACTIVE: frozenset({InstanceState.DRAINING, InstanceState.DEAD}),
    InstanceState.DRAINING: frozenset({InstanceState.ACTIVE, InstanceState.DEAD}),
    InstanceState.DEAD: frozenset(),
}


@dataclass
class InstanceRecord:
    reg: RegisterWorker
    identity: bytes
    load: InstanceLoad
    last_report: float
    fsm: StateMachine = field(default=None)  # type: ignore[assignment]
    # a drain (True) or undrain (False) the scheduler ordered, until a report confirms it
    drain_order: bool | None = None

    def __post_init__(self):
        if self.fsm is None:
            self.fsm = StateMachine(self.reg.instance_id, InstanceState.ACTIVE, TRANSITIONS)

    @property
    def state(self) -> InstanceState:
        return self.fsm.state

    def info(self, now: float) -> InstanceInfo:
        return InstanceInfo(
            instance_id=self.reg.instance_id,
            address=self.reg.address,
            state=self.state,
            load=self.load,
            report_age_s=max(0.0, now - self.last_report),
            model=self.reg.model,
            max_model_len=self.reg.max_model_len,
        )


class Registry:
    def __init__(self, heartbeat_timeout_s: float):
        self.timeout = heartbeat_timeout_s
        self.records: dict[str, InstanceRecord] = {}
        # dispatch tickets whose instance has not reported since they were issued: id -> instance
        self.tickets: dict[int, str] = {}
        self._next_ticket = 0

    def register(self, reg: RegisterWorker, identity: bytes, now: float) -> InstanceRecord:
        empty = InstanceLoad(reg.num_blocks, 0, 0, 0, reg.max_batch_size, reg.block_size)
        old = self.records.get(reg.instance_id)
        if old is not None:
            log.info("instance %s re-registered", reg.instance_id)
        rec = InstanceRecord(reg, identity, old.load if old else empty, now)
        self.records[reg.instance_id] = rec
        return rec

    def report(self, instance_id: str, load: InstanceLoad, now: float) -> InstanceRecord | None:
        rec = self.records.get(instance_id)
        if rec is None:
            return None
        rec.load = load
        rec.last_report = now
        if self.tickets:  # their queued estimates on this instance are gone with the report
            self.tickets = {t: iid for t, iid in self.tickets.items() if iid != instance_id}
        if rec.drain_order is not None:
            if load.draining != rec.drain_order:
                return rec  # sent before the worker read the order: the order stands
            rec.drain_order = None
        self._follow(rec, load.draining)
        return rec

    def order_drain(self, instance_id: str, draining: bool) -> InstanceRecord | None:
        """The scheduler orders ``instance_id`` to drain (or to stop draining): the state
        changes now (dispatch stops at once) and holds until a report confirms it."""
        rec = self.records.get(instance_id)
        if rec is None:
            return None
        rec.drain_order = draining
        self._follow(rec, draining)
        return rec

    @staticmethod
    def _follow(rec: InstanceRecord, draining: bool) -> None:
        target = InstanceState.DRAINING if draining else InstanceState.ACTIVE
        if rec.state is not target and rec.fsm.can(target):
            rec.fsm.transition(target)

    def note_dispatch(self, instance_id: str, request_id: str, num_blocks: int,
                      num_tokens: int, priority: Priority) -> None:
        """Count a request just dispatched to ``instance_id`` as queued there until the
        instance's next report (which then includes it): the next decisions, made before that
        report, see it. Llumnix's manager does the same with its cached instance loads."""
        rec = self.records.get(instance_id)
        if rec is None:
            return
        queued = RequestLoad(request_id, num_blocks, priority, num_tokens, running=False)
        rec.load = replace(rec.load, num_waiting=rec.load.num_waiting + 1,
                           requests=(*rec.load.requests, queued))

    def issue_ticket(self, instance_id: str) -> int:
        """Name a dispatch ticket's decision (just counted by ``note_dispatch`` as a queued
        request with id "" on ``instance_id``), so that the frontend can release it unused."""
        if instance_id not in self.records:
            return 0
        self._next_ticket += 1
        self.tickets[self._next_ticket] = instance_id
        return self._next_ticket

    def release_ticket(self, ticket_id: int) -> bool:
        """A ticket no request used: stop counting it as queued on its instance. Only while
        that instance has not reported since the ticket was issued (a report already replaced
        the estimate); then one queued entry with id "" goes (tickets' entries are alike, so
        which one does not matter). True if an entry was dropped."""
        rec = self.records.get(self.tickets.pop(ticket_id, ""))
        if rec is None:  # unknown, or its instance reported since (or left)
            return False
        reqs = rec.load.requests
        for k in range(len(reqs) - 1, -1, -1):
            if reqs[k].request_id == "" and not reqs[k].running:
                rec.load = replace(rec.load, num_waiting=max(0, rec.load.num_waiting - 1),
                                   requests=reqs[:k] + reqs[k + 1:])
                return True
        return False

    def remove(self, instance_id: str) -> InstanceRecord | None:
        return self.records.pop(instance_id, None)

    def reap(self, now: float) -> list[InstanceRecord]:
        """Drop instances silent for longer than the heartbeat timeout; return them."""
        dead = [r for r in self.records.values() if now - r.last_report > self.timeout]
        for rec in dead:
            rec.fsm.transition(InstanceState.DEAD)
            del self.records[rec.reg.instance_id]
            log.warning("instance %s missed heartbeats for %.2fs: removed from dispatch",
                        rec.reg.instance_id, now - rec.last_report)
        return dead

    def infos(self, now: float) -> list[InstanceInfo]:
        return [r.info(now) for r in sorted(self.records.values(), key=lambda r: r.reg.instance_id)]

    def get(self, instance_id: str) -> InstanceRecord | None:
        return self.records.get(instance_id)
