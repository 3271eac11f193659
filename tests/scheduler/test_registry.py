"""scheduler/registry.Registry: registration, reports, reaping with explicit ``now`` values, and
every edge of the instance lifecycle."""

from __future__ import annotations

import pytest

from llumnix_zmq.common.fsm import IllegalTransition
from llumnix_zmq.protocol.messages import (
    PROTOCOL_VERSION,
    InstanceInfo,
    InstanceLoad,
    InstanceState,
    RegisterWorker,
    RequestLoad,
)
from llumnix_zmq.scheduler.registry import TRANSITIONS, Registry

A, D, X = InstanceState.ACTIVE, InstanceState.DRAINING, InstanceState.DEAD


def reg(instance_id: str, num_blocks: int = 100, address: str | None = None) -> RegisterWorker:
    return RegisterWorker(PROTOCOL_VERSION, instance_id, address or f"tcp://h:{instance_id}",
                          "sim", "llama", 16, num_blocks, 2048, 8)


def load(used: int, draining: bool = False) -> InstanceLoad:
    return InstanceLoad(100, used, 1, 0, 8, 16, (RequestLoad("r", used),), draining)


def test_transition_table_is_the_documented_lifecycle():
    assert TRANSITIONS == {A: frozenset({D, X}), D: frozenset({A, X}), X: frozenset()}


def test_register_starts_active_with_an_empty_load():
    r = Registry(heartbeat_timeout_s=1.0)
    rec = r.register(reg("w1", num_blocks=500), b"id-1", now=10.0)
    assert rec.state is A
    assert rec.identity == b"id-1"
    assert rec.last_report == 10.0
    assert rec.load == InstanceLoad(500, 0, 0, 0, 8, 16)
    assert r.get("w1") is rec
    assert rec.fsm.history == [A]


def test_report_updates_load_and_time():
    r = Registry(1.0)
    r.register(reg("w1"), b"i", now=10.0)
    rec = r.report("w1", load(30), now=10.5)
    assert rec is r.get("w1")
    assert rec.load == load(30)
    assert rec.last_report == 10.5
    assert rec.state is A


def test_report_for_unknown_instance_returns_none():
    r = Registry(1.0)
    assert r.report("ghost", load(1), now=1.0) is None
    assert r.records == {}


def test_reregister_keeps_the_last_load_and_resets_identity_and_time():
    r = Registry(1.0)
    r.register(reg("w1"), b"old", now=10.0)
    r.report("w1", load(42), now=10.25)
    rec = r.register(reg("w1", address="tcp://new:1"), b"new", now=20.0)
    assert rec.load == load(42)
    assert rec.identity == b"new"
    assert rec.reg.address == "tcp://new:1"
    assert rec.last_report == 20.0
    assert rec.state is A
    assert list(r.records) == ["w1"]


def test_active_to_draining_via_report_then_back_to_active():
    r = Registry(1.0)
    r.register(reg("w1"), b"i", now=0.0)
    rec = r.report("w1", load(5, draining=True), now=0.5)
    assert rec.state is D
    r.report("w1", load(5, draining=True), now=0.75)  # stays DRAINING, no second transition
    assert rec.fsm.history == [A, D]
    r.report("w1", load(5, draining=False), now=1.0)  # the worker stopped draining itself
    assert rec.fsm.history == [A, D, A]


def test_an_undrain_order_survives_a_report_sent_before_the_worker_read_it():
    """The race that left an active worker DRAINING for good: drain, undrain, then a report
    the worker sent between the two orders arrives."""
    r = Registry(1.0)
    r.register(reg("w1"), b"i", now=0.0)
    rec = r.order_drain("w1", True)
    assert rec.state is D and rec.drain_order is True
    r.report("w1", load(5, draining=False), now=0.1)  # stale: sent before the drain order
    assert rec.state is D and rec.drain_order is True
    r.report("w1", load(5, draining=True), now=0.2)  # confirmed
    assert rec.state is D and rec.drain_order is None
    r.order_drain("w1", False)  # scale-out wins back the draining instance
    assert rec.state is A and rec.drain_order is False
    r.report("w1", load(5, draining=True), now=0.3)  # stale: sent before the undrain order
    assert rec.state is A and rec.drain_order is False
    r.report("w1", load(5, draining=False), now=0.4)  # confirmed
    assert rec.state is A and rec.drain_order is None
    assert rec.fsm.history == [A, D, A]
    r.report("w1", load(5, draining=True), now=0.5)  # no order pending: the worker's own drain
    assert rec.fsm.history == [A, D, A, D]


def test_order_drain_on_an_unknown_instance_returns_none():
    assert Registry(1.0).order_drain("nope", True) is None


def test_reap_uses_a_strict_timeout():
    r = Registry(heartbeat_timeout_s=1.0)
    r.register(reg("w1"), b"i", now=10.0)
    r.register(reg("w2"), b"j", now=10.0)
    r.report("w2", load(1), now=10.5)
    assert r.reap(now=11.0) == []  # exactly the timeout: still alive
    dead = r.reap(now=11.25)
    assert [d.reg.instance_id for d in dead] == ["w1"]
    assert dead[0].state is X
    assert dead[0].fsm.history == [A, X]
    assert r.get("w1") is None
    assert r.reap(now=11.5) == []
    assert [d.reg.instance_id for d in r.reap(now=11.625)] == ["w2"]
    assert r.records == {}


def test_draining_to_dead_via_reap():
    r = Registry(0.5)
    r.register(reg("w1"), b"i", now=0.0)
    r.report("w1", load(3, draining=True), now=1.0)
    (dead,) = r.reap(now=1.75)
    assert dead.fsm.history == [A, D, X]


def test_dead_is_terminal():
    r = Registry(0.5)
    rec = r.register(reg("w1"), b"i", now=0.0)
    r.reap(now=1.0)
    for target in (A, D, X):
        with pytest.raises(IllegalTransition):
            rec.fsm.transition(target)


def test_every_edge_of_the_table_is_walkable():
    walked = set()
    for source, targets in TRANSITIONS.items():
        for target in targets:
            r = Registry(1.0)
            rec = r.register(reg("w"), b"i", now=0.0)
            if source is D:
                rec.fsm.transition(D)
            rec.fsm.transition(target)
            assert rec.state is target
            walked.add((source, target))
    assert walked == {(A, D), (A, X), (D, A), (D, X)}


def test_remove():
    r = Registry(1.0)
    rec = r.register(reg("w1"), b"i", now=0.0)
    assert r.remove("w1") is rec
    assert r.remove("w1") is None
    assert r.reap(now=100.0) == []


def test_infos_sorted_by_id_with_exact_report_age():
    r = Registry(10.0)
    r.register(reg("w2"), b"b", now=1.0)
    r.register(reg("w10"), b"c", now=2.0)
    r.register(reg("w1"), b"a", now=3.0)
    r.report("w2", load(7, draining=True), now=4.5)
    infos = r.infos(now=5.0)
    assert infos == [
        InstanceInfo("w1", "tcp://h:w1", A, InstanceLoad(100, 0, 0, 0, 8, 16), 2.0, "llama", 2048),
        InstanceInfo("w10", "tcp://h:w10", A, InstanceLoad(100, 0, 0, 0, 8, 16), 3.0, "llama",
                     2048),
        InstanceInfo("w2", "tcp://h:w2", D, load(7, draining=True), 0.5, "llama", 2048),
    ]


def test_report_age_never_negative():
    r = Registry(1.0)
    r.register(reg("w1"), b"i", now=5.0)
    assert r.infos(now=4.0)[0].report_age_s == 0.0


def test_a_dispatch_counts_as_queued_until_the_next_report():
    from llumnix_zmq.protocol.messages import Priority
    from llumnix_zmq.scheduler.policy.dispatch import dispatch
    from llumnix_zmq.scheduler.policy.freeness import PolicyConfig

    r = Registry(heartbeat_timeout_s=1.0)
    r.register(reg("w1", num_blocks=100), b"1", now=0.0)
    r.register(reg("w2", num_blocks=100), b"2", now=0.0)
    r.report("w1", InstanceLoad(100, 10, 1, 0, 8, 16, (RequestLoad("a", 10),)), now=0.0)
    r.report("w2", InstanceLoad(100, 12, 1, 0, 8, 16, (RequestLoad("b", 12),)), now=0.0)
    cfg = PolicyConfig()
    first, _ = dispatch("llumnix", r.infos(0.0), 64, Priority.NORMAL, None, None, cfg=cfg)
    assert first == "w1"
    r.note_dispatch("w1", "q1", 4, 64, Priority.NORMAL)
    w1 = r.get("w1").load
    assert (w1.num_waiting, w1.requests[-1]) == (
        1, RequestLoad("q1", 4, Priority.NORMAL, 64, running=False))
    # the next decision, before w1 reports again, sees q1 queued there and picks w2
    second, _ = dispatch("llumnix", r.infos(0.0), 64, Priority.NORMAL, None, None, cfg=cfg)
    assert second == "w2"
    # w1's next report replaces the estimate (q1 is in it now, or finished)
    r.report("w1", InstanceLoad(100, 10, 1, 0, 8, 16, (RequestLoad("a", 10),)), now=0.01)
    assert r.get("w1").load.num_waiting == 0
    r.note_dispatch("gone", "q2", 4, 64, Priority.NORMAL)  # unknown instance: ignored


def test_an_unused_ticket_is_released_only_until_its_instance_reports():
    from llumnix_zmq.protocol.messages import Priority

    r = Registry(heartbeat_timeout_s=1.0)
    r.register(reg("w1"), b"1", now=0.0)
    r.report("w1", InstanceLoad(100, 10, 1, 0, 8, 16, (RequestLoad("a", 10),)), now=0.0)
    # two tickets and a real request decided for w1 before its next report
    r.note_dispatch("w1", "", 4, 64, Priority.NORMAL)
    t1 = r.issue_ticket("w1")
    r.note_dispatch("w1", "cmpl-x", 5, 70, Priority.NORMAL)
    r.note_dispatch("w1", "", 4, 64, Priority.NORMAL)
    t2 = r.issue_ticket("w1")
    assert (t1, t2) == (1, 2) and r.get("w1").load.num_waiting == 3
    # t1 was not used: one ticket entry goes, the real request and the other ticket stay
    assert r.release_ticket(t1)
    load = r.get("w1").load
    assert load.num_waiting == 2
    assert [q.request_id for q in load.requests] == ["a", "", "cmpl-x"]
    assert not r.release_ticket(t1)  # released once
    # after a report the estimate is gone: releasing t2 then must not touch the new load
    r.report("w1", InstanceLoad(100, 10, 1, 1, 8, 16, (RequestLoad("a", 10),
                                                      RequestLoad("cmpl-x", 5, running=False))),
             now=0.05)
    assert r.tickets == {}
    assert not r.release_ticket(t2)
    assert r.get("w1").load.num_waiting == 1
    assert r.issue_ticket("gone") == 0 and not r.release_ticket(99)
