"""Virtual usage and freeness on crafted loads (exact numbers)."""

import math

import pytest

from llumnix_zmq.protocol.messages import (
    InstanceInfo,
    InstanceLoad,
    InstanceState,
    Priority,
    RequestLoad,
)
from llumnix_zmq.scheduler.policy import PolicyConfig, instance_freeness, virtual_usage
from llumnix_zmq.scheduler.policy.freeness import freeness
from llumnix_zmq.scheduler.policy.freeness import blocks_for_tokens, id_order_key, summarize

CFG = PolicyConfig(headroom_blocks=4)


def req(rid, blocks, *, running=True, high=False):
    prio = Priority.HIGH if high else Priority.NORMAL
    return RequestLoad(rid, blocks, prio, running=running)


def load(total, *reqs, draining=False):
    run = [r for r in reqs if r.running]
    return InstanceLoad(
        total, sum(r.num_blocks for r in run), len(run), len(reqs) - len(run),
        requests=tuple(reqs), draining=draining,
    )


def test_running_blocks_only():
    ld = load(100, req("a", 10), req("b", 20))
    assert virtual_usage(ld, CFG) == 30.0
    assert freeness(ld, CFG) == 35.0


def test_blocks_reserved_for_no_running_request_count_as_used():
    # 30 blocks run; 12 more are in use (pre-allocated for an incoming migration): not free
    run = (req("a", 10), req("b", 20))
    ld = InstanceLoad(100, 42, 2, 0, requests=run, num_migrating_in=1)
    assert summarize(ld).reserved_blocks == 12
    assert virtual_usage(ld, CFG) == 42.0
    assert freeness(ld, CFG) == 29.0
    # a report counting fewer used blocks than its running requests hold reserves nothing
    ld = InstanceLoad(100, 25, 2, 0, requests=run)
    assert summarize(ld).reserved_blocks == 0
    assert virtual_usage(ld, CFG) == 30.0


def test_head_of_line_demand_counted_once():
    # waiting w1 (15) is the head; w2 (40) behind it is not counted
    ld = load(100, req("a", 10), req("w1", 15, running=False), req("b", 20),
              req("w2", 40, running=False))
    assert virtual_usage(ld, CFG) == 45.0
    assert freeness(ld, CFG) == 27.5
    s = summarize(ld)
    assert (s.head_demand, s.rest_demand, s.num_running, s.num_waiting) == (15, 40, 2, 2)


def test_headroom_per_running_high_request():
    ld = load(100, req("h", 10, high=True), req("n", 20), req("hw", 5, running=False, high=True))
    # 30 running + 5 head demand + 4 headroom for the one RUNNING high request
    assert virtual_usage(ld, CFG) == 39.0
    assert freeness(ld, CFG) == 30.5
    assert freeness(ld, PolicyConfig(headroom_blocks=0)) == 32.5
    assert freeness(ld, PolicyConfig(dispatch_policy="llumnix-base")) == 32.5


def test_draining_is_infinite():
    ld = load(100, req("a", 10), draining=True)
    assert virtual_usage(ld, CFG) == math.inf
    assert freeness(ld, CFG) == -math.inf
    plain = load(100, req("a", 10))
    info = InstanceInfo("w-0", "tcp://x", InstanceState.DRAINING, plain)
    assert instance_freeness(info, CFG) == -math.inf
    active = InstanceInfo("w-0", "tcp://x", InstanceState.ACTIVE, plain)
    assert instance_freeness(active, CFG) == 90.0


def test_no_running_uses_batch_one_and_can_go_negative():
    assert freeness(load(100, req("w", 30, running=False)), CFG) == 70.0
    assert freeness(load(100), CFG) == 100.0
    assert freeness(load(10, req("a", 8), req("w", 6, running=False)), CFG) == -4.0


def test_report_without_request_detail_uses_blocks_used():
    ld = InstanceLoad(num_blocks_total=100, num_blocks_used=40, num_running=2, num_waiting=1)
    assert virtual_usage(ld, CFG) == 40.0
    assert freeness(ld, CFG) == 30.0


def test_config_validation_and_flags():
    with pytest.raises(ValueError):
        PolicyConfig(migrate_out_threshold=5, migrate_in_threshold=4)
    with pytest.raises(ValueError):
        PolicyConfig(scale_out_threshold=70, scale_in_threshold=60)
    with pytest.raises(ValueError):
        PolicyConfig(freeness_clip=50)
    assert PolicyConfig().clip == 120.0
    assert PolicyConfig(scale_in_threshold=200).clip == 400.0
    assert PolicyConfig(freeness_clip=61).clip == 61
    with pytest.raises(ValueError):
        PolicyConfig(dispatch_policy="nope")
    with pytest.raises(ValueError):
        PolicyConfig(min_instances=3, max_instances=2)
    assert PolicyConfig().migration_enabled
    assert PolicyConfig(dispatch_policy="llumnix-base").migration_enabled
    assert not PolicyConfig(dispatch_policy="infaas++").migration_enabled
    assert PolicyConfig(dispatch_policy="round-robin", enable_migration=True).migration_enabled
    assert not PolicyConfig(dispatch_policy="llumnix-base").priority_aware


def test_helpers():
    assert [blocks_for_tokens(n, 16) for n in (0, 1, 16, 17, 32)] == [1, 1, 1, 2, 2]
    ids = ["w-10", "w-2", "a", "w-1", "w-2b"]
    assert sorted(ids, key=id_order_key) == ["a", "w-1", "w-2", "w-2b", "w-10"]


def test_summary_memo_is_by_identity_and_bounded(monkeypatch):
    import llumnix_zmq.scheduler.policy.freeness as fr

    monkeypatch.setattr(fr, "_MEMO_MAX", 2)
    loads = [load(100, req("a", k)) for k in range(1, 6)]
    for _ in range(2):
        assert [freeness(ld, CFG) for ld in loads] == [99.0, 98.0, 97.0, 96.0, 95.0]
    assert len(fr._memo) <= 2
