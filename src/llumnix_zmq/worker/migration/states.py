"""The two state machines of a migration: one per end, an enum and a table of legal edges each.

Source (one per request being migrated out)::

    NEW ──> PRECOPY ──┬──> SUSPENDED ──> COMMITTING ──> DONE
     │ │      │ ^     │     ^  │            │  ^
     │ │      └─┘     │     │  │            └──┘ (COMMIT retried, same ids)
     │ │ (next round) │     │  v            v
     │ └──────────────┼─────┘ (few blocks: no pre-copy round)
     ├──> DEQUEUED ───┼──> COMMITTING    ABORTED  (resumed on the source, or the request is gone)
     └──> ABORTED <───┴──────── (from PRECOPY, SUSPENDED, DEQUEUED, COMMITTING)

| state      | the request on the source               | the destination holds            |
|------------|-----------------------------------------|----------------------------------|
| NEW        | running or queued, untouched            | nothing                          |
| PRECOPY    | RUNNING, decoding; rounds of full blocks| a reservation growing per stage  |
| SUSPENDED  | SUSPENDED (blocks kept); last blocks out| the same, plus the final stage   |
| DEQUEUED   | gone from the queue (kept: its state)   | nothing (a queued request has no |
|            |                                         | KV: it moves by COMMIT alone)    |
| COMMITTING | SUSPENDED / dequeued; COMMIT in flight  | maybe the committed request      |
| DONE       | removed (blocks freed, no output)       | the request, RUNNING or queued   |
| ABORTED    | resumed / re-queued, or already gone    | nothing (reservation released)   |

Destination (one per incoming migration, keyed by migration id + request id)::

    NEW ──> RECEIVING ──> COMMITTED
     │        │ ^   │
     │        └─┘   └──> ABORTED
     ├──> COMMITTED      (a queued request: COMMIT with no stage before it)
     └──> ABORTED        (refused at stage 0: no space, busy, duplicate id)

COMMITTED and ABORTED are terminal on both ends and leave a tombstone on the destination (the
outcome of that migration id, kept ``tombstone_ttl_s``) so that late or duplicated messages get
the same answer again.
"""

from __future__ import annotations

import enum

from ...common.fsm import StateMachine


class SrcState(enum.Enum):
    NEW = "new"
    PRECOPY = "precopy"
    SUSPENDED = "suspended"
    DEQUEUED = "dequeued"
    COMMITTING = "committing"
    DONE = "done"
    ABORTED = "aborted"


class DstState(enum.Enum):
    NEW = "new"
    RECEIVING = "receiving"
    COMMITTED = "committed"
    ABORTED = "aborted"


SOURCE_TABLE: dict[SrcState, frozenset[SrcState]] = {
    SrcState.NEW: frozenset({SrcState.PRECOPY, SrcState.SUSPENDED, SrcState.DEQUEUED,
                             SrcState.ABORTED}),
    SrcState.PRECOPY: frozenset({SrcState.PRECOPY, SrcState.SUSPENDED, SrcState.ABORTED}),
    SrcState.SUSPENDED: frozenset({SrcState.COMMITTING, SrcState.ABORTED}),
    SrcState.DEQUEUED: frozenset({SrcState.COMMITTING, SrcState.ABORTED}),
    SrcState.COMMITTING: frozenset({SrcState.COMMITTING, SrcState.DONE, SrcState.ABORTED}),
    SrcState.DONE: frozenset(),
    SrcState.ABORTED: frozenset(),
}

DESTINATION_TABLE: dict[DstState, frozenset[DstState]] = {
    DstState.NEW: frozenset({DstState.RECEIVING, DstState.COMMITTED, DstState.ABORTED}),
    DstState.RECEIVING: frozenset({DstState.RECEIVING, DstState.COMMITTED, DstState.ABORTED}),
    DstState.COMMITTED: frozenset(),
    DstState.ABORTED: frozenset(),
}

TERMINAL = frozenset({SrcState.DONE, SrcState.ABORTED, DstState.COMMITTED, DstState.ABORTED})


def source_fsm(name: str) -> StateMachine[SrcState]:
    return StateMachine(name, SrcState.NEW, SOURCE_TABLE)


def destination_fsm(name: str) -> StateMachine[DstState]:
    return StateMachine(name, DstState.NEW, DESTINATION_TABLE)
