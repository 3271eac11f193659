"""AutoScaler decisions: the aggregate average, band, min/max, cooldown (fake clock), launches\nat once, scale-in judged without the victim, victim choice, drains cancelled."""

import dataclasses
import math

import pytest

from llumnix_zmq.clock import FakeClock
from llumnix_zmq.protocol.messages import (
    InstanceInfo,
    InstanceLoad,
    InstanceState,
    RequestLoad,
)
from llumnix_zmq.scheduler.policy import (
    AutoScaler,
    Launcher,
    PolicyConfig,
    ScaleDecision,
)

CFG = PolicyConfig(
    min_instances=1, max_instances=4, scale_cooldown_s=10.0, scale_out_threshold=10.0,
    scale_in_threshold=60.0, freeness_clip=120.0, report_staleness_s=1.0,
)


def inst(iid, free, *, running=1, total=100, state=InstanceState.ACTIVE, age=0.0, draining=False):
    """An instance with freeness ``free``: ``running`` equal requests (F = free exactly)."""
    each = (total - free * running) // running if running else 0
    assert each * running == total - free * running or not running
    reqs = tuple(RequestLoad(f"{iid}-r{k}", each) for k in range(running))
    ld = InstanceLoad(total, each * running, running, 0, requests=reqs, draining=draining)
    return InstanceInfo(iid, f"tcp://{iid}", state, ld, report_age_s=age)


def idle(iid, total=100, **kw):
    return inst(iid, 0, running=0, total=total, **kw)


@pytest.fixture
def clock():
    return FakeClock(1000.0)


def test_in_band(clock):
    # F_c = (100 + 100 - 70 - 60) / 2 = 35: the cluster as one instance
    d = AutoScaler(CFG).decide([inst("a", 30), inst("b", 40)], clock.now())
    assert d == ScaleDecision("none", "", "in-band", 35.0)


def test_average_is_the_aggregate_not_a_mean_of_f():
    # a: 1 request, 70 free; b: 4 requests of 22 blocks, 12 free. Per-instance F 70 and 3, their
    # mean 36.5; the cluster as one instance: 82 free blocks over 5 requests = 16.4
    table = [inst("a", 70), inst("b", 3, running=4)]
    assert AutoScaler(CFG).average_freeness(table) == pytest.approx(16.4)
    # an idle instance adds its blocks but no request: (2 + 2 + 10000) / 2
    table = [inst("a", 2), inst("b", 2), idle("big", total=10_000)]
    assert AutoScaler(CFG).average_freeness(table) == pytest.approx(5002.0)
    # no request at all: infinitely free
    assert AutoScaler(CFG).average_freeness([idle("a"), idle("b")]) == math.inf


def test_waiting_requests_count_as_load():
    # 1 running request of 50 blocks, 2 waiting needing 20 and 10: (100 - 80) / 3
    reqs = (RequestLoad("r0", 50), RequestLoad("w0", 20, running=False),
            RequestLoad("w1", 10, running=False))
    ld = InstanceLoad(100, 50, 1, 2, requests=reqs)
    info = InstanceInfo("a", "tcp://a", InstanceState.ACTIVE, ld)
    assert AutoScaler(CFG).average_freeness([info]) == pytest.approx(20 / 3)


def test_scale_out_launches_enough_at_once_then_cooldown(clock):
    sc = AutoScaler(CFG)
    low = [inst("a", 5), inst("b", 8)]
    # F_c 6.5; one more 100-block instance: (13 + 100) / 2 = 56.5 >= 10 -> one launch
    assert sc.decide(low, clock.now()) == ScaleDecision("out", "", "freeness-low", 6.5, 1)
    assert sc.last_action_time == 1000.0
    clock.advance(9.99)
    assert sc.decide(low, clock.now()).reason == "cooldown"
    clock.advance(0.01)
    # the pending launch counts as an idle instance: 56.5, in band, no second launch
    d = sc.decide(low, clock.now(), num_pending=1)
    assert (d.action, d.reason, d.average_freeness) == ("none", "in-band", 56.5)
    # 4 instances of 25 requests x 4 blocks, none free (F_c 0): k idle ones give 100k / 100
    # >= 10 for k = 10; capped by max_instances (CFG: 4) -> none left -> at-max; max 16 -> 10
    full = [inst(f"w-{k}", 0, running=25) for k in range(4)]
    assert AutoScaler(CFG).decide(full, clock.now()).reason == "at-max"
    big = dataclasses.replace(CFG, max_instances=16)
    assert AutoScaler(big).decide(full, clock.now()) == ScaleDecision(
        "out", "", "freeness-low", 0.0, 10)
    # only 3 more fit under max 7
    d = AutoScaler(dataclasses.replace(CFG, max_instances=7)).decide(full, clock.now())
    assert (d.action, d.count) == ("out", 3)


def test_at_max(clock):
    low = [inst(f"w-{k}", 5) for k in range(4)]
    assert AutoScaler(CFG).decide(low, clock.now()).reason == "at-max"
    # 3 ACTIVE + 1 pending: the pending one lifts F_c to (15 + 100) / 3 = 38.3, in band
    assert AutoScaler(CFG).decide(low[:3], clock.now(), num_pending=1).reason == "in-band"


def test_scale_in_judged_without_the_victim(clock):
    # three instances of 100 blocks, 4 requests in all, 110 blocks used: F_c = 190 / 4 = 47.5
    # would be in band anyway; with 1 + 1 requests and 60 used: F_c = 240 / 2 = 120 and
    # without the victim (140 - 0) / 2 = 70 > 60 -> drain it
    table = [inst("w-1", 70, running=1), idle("w-3"), inst("w-2", 70, running=1)]
    d = AutoScaler(CFG).decide(table, clock.now())
    assert d == ScaleDecision("in", "w-3", "freeness-high", 120.0)
    # above the band now, but not without the victim: F_c = (200 - 50) / 1 = 150, without the
    # idle w-2 (100 - 50) / 1 = 50 <= 60 (the old mean of clipped F, (50 + 120) / 2, drained it)
    table = [inst("w-1", 50, running=1), idle("w-2")]
    d = AutoScaler(CFG).decide(table, clock.now())
    assert (d.action, d.reason, d.average_freeness) == ("none", "in-band", 150.0)


def test_victim_fewest_running_then_fewest_blocks_then_id(clock):
    # all idle: ties on running and blocks -> lowest id in natural order
    d = AutoScaler(CFG).decide([idle("w-10"), idle("w-2"), idle("w-11")], clock.now())
    assert (d.action, d.instance_id) == ("in", "w-2")
    # w-1 and w-9 run one request each (30 and 10 blocks), w-3 two: w-9 has the least to move.
    # F_c = (1200 - 60) / 4 = 285; without w-9 (1100 - 60) / 4 = 260 > 60
    table = [inst("w-1", 70), inst("w-9", 90), inst("w-3", 490, running=2, total=1000)]
    assert AutoScaler(CFG).decide(table, clock.now()) == ScaleDecision(
        "in", "w-9", "freeness-high", 285.0)


def test_draining_instance_counts_its_load_not_its_capacity(clock):
    # a: 1 request, 40 free; d drains 2 requests of 30 blocks. F_c = (100 - 60 - 60) / 3 < 0:
    # its requests are about to land on a. Cancel the drain rather than launch (artifact).
    d_inst = inst("d", 20, running=2, state=InstanceState.DRAINING)
    table = [inst("a", 40), d_inst]
    d = AutoScaler(CFG).decide(table, clock.now())
    assert d == ScaleDecision("undrain", "d", "freeness-low", pytest.approx(-20 / 3))
    # the same through load.draining; the lowest id comes back first
    e_inst = inst("e", 20, running=2, draining=True)
    d = AutoScaler(CFG).decide([inst("a", 40), e_inst, d_inst], clock.now())
    assert (d.action, d.instance_id) == ("undrain", "d")
    # a drain whose requests fit: F_c = (400 - 10 - 60) / 3 = 110, without b 76.7 > 60, but one
    # drain at a time
    table = [inst("a", 90), idle("b"), idle("c"), idle("e"), d_inst]
    d = AutoScaler(CFG).decide(table, clock.now())
    assert (d.action, d.reason, d.average_freeness) == ("none", "drain-in-progress", 110.0)


def test_scale_in_waits_for_pending_launches(clock):
    assert AutoScaler(CFG).decide([idle("a"), idle("b")], clock.now(),
                                  num_pending=1).reason == "launch-pending"


def test_at_min_and_drain_in_progress(clock):
    two_idle = [idle("a"), idle("b")]
    assert AutoScaler(CFG).decide(two_idle, clock.now()).action == "in"
    cfg2 = dataclasses.replace(CFG, min_instances=2)
    assert AutoScaler(cfg2).decide(two_idle, clock.now()).reason == "at-min"
    draining = two_idle + [idle("c", state=InstanceState.DRAINING)]
    assert AutoScaler(CFG).decide(draining, clock.now()).reason == "drain-in-progress"
    draining = two_idle + [idle("c", draining=True)]
    assert AutoScaler(CFG).decide(draining, clock.now()).reason == "drain-in-progress"
    dead = two_idle + [idle("c", state=InstanceState.DEAD)]
    assert AutoScaler(CFG).decide(dead, clock.now()).action == "in"


def test_min_max_ignore_cooldown_and_count_pending(clock):
    sc = AutoScaler(CFG)
    assert sc.decide([], clock.now()) == ScaleDecision("out", "", "below-min")
    # the launch is pending: min reached; still in cooldown
    assert sc.decide([], clock.now(), num_pending=1).reason == "cooldown"
    clock.advance(10.0)
    assert sc.decide([], clock.now(), num_pending=1).reason == "no-reports"
    # a DRAINING or DEAD instance does not count toward min
    out = sc.decide([idle("d", state=InstanceState.DRAINING), idle("x", state=InstanceState.DEAD)],
                    clock.now())
    assert out.reason == "below-min"
    # above max, even inside the cooldown
    five = [inst(f"w-{k}", 30, running=1 + k % 2) for k in range(5)]
    assert sc.decide(five, clock.now()) == ScaleDecision("in", "w-0", "above-max")


def test_stale_reports_left_out_of_the_average(clock):
    table = [inst("a", 30), inst("b", 1, age=5.0)]
    assert AutoScaler(CFG).decide(table, clock.now()).average_freeness == 30.0
    assert AutoScaler(CFG).decide([inst("b", 1, age=5.0)], clock.now()).reason == "no-reports"


def test_restarted_scaler_waits_one_cooldown(clock):
    sc = AutoScaler(CFG, now=clock.now())
    low = [inst("a", 5)]
    assert sc.decide(low, clock.advance(5.0)).reason == "cooldown"
    assert sc.decide(low, clock.advance(5.0)).action == "out"


def test_launcher_protocol_shape():
    class Fake:
        def __init__(self):
            self.n = 0
            self.stopped = []

        def launch(self) -> str:
            self.n += 1
            return f"w-{self.n}"

        def stop(self, instance_id: str) -> None:
            self.stopped.append(instance_id)

    lau: Launcher = Fake()
    assert lau.launch() == "w-1"
    lau.stop("w-1")
    assert lau.stopped == ["w-1"]
