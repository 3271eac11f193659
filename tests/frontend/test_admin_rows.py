"""frontend/server.admin_row: one instance of GET /admin/instances, from the scheduler's table,
where a dispatch ticket's decision is a queued entry with no request id."""

from __future__ import annotations

from llumnix_zmq.frontend.server import admin_row
from llumnix_zmq.protocol.messages import (InstanceInfo, InstanceLoad, InstanceState, Priority,
                                           RequestLoad)


def info(*requests: RequestLoad, waiting: int) -> InstanceInfo:
    running = sum(1 for r in requests if r.running)
    load = InstanceLoad(100, 7, running, waiting, 8, 16, requests)
    return InstanceInfo("w-1", "ipc:///w1", InstanceState.ACTIVE, load, 0.0)


def test_a_tickets_pending_decision_is_not_listed_as_a_waiting_request():
    row = admin_row(info(RequestLoad("a", 4, Priority.NORMAL, 60, True),
                         RequestLoad("b", 3, Priority.NORMAL, 40, False),
                         RequestLoad("", 1, Priority.NORMAL, 9, False),  # a ticket
                         waiting=2))
    assert row == {"id": "w-1", "address": "ipc:///w1", "state": "active",
                   "blocks_used": 7, "blocks_total": 100, "running": 1, "waiting": 1,
                   "pending_dispatches": 1, "request_ids": ["a"], "waiting_ids": ["b"]}


def test_without_tickets_the_row_is_the_report():
    row = admin_row(info(RequestLoad("a", 4, Priority.NORMAL, 60, True), waiting=0))
    assert (row["running"], row["waiting"], row["pending_dispatches"], row["request_ids"],
            row["waiting_ids"]) == (1, 0, 0, ["a"], [])
