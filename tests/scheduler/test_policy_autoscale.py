"""AutoScaler decisions: band, min/max, cooldown (fake clock), victim choice, clipping."""

import dataclasses

import pytest

from llumnix_zmq.clock import FakeClock
from llumnix_zmq.protocol.messages import InstanceInfo, InstanceLoad, InstanceState, RequestLoad
from llumnix_zmq.scheduler.policy import AutoScaler, Launcher, PolicyConfig, ScaleDecision

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
    d = AutoScaler(CFG).decide([inst("a", 30), inst("b", 40)], clock.now())
    assert d == ScaleDecision("none", "", "in-band", 35.0)


def test_scale_out_then_cooldown(clock):
    sc = AutoScaler(CFG)
    low = [inst("a", 5), inst("b", 8)]
    assert sc.decide(low, clock.now()) == ScaleDecision("out", "", "freeness-low", 6.5)
    assert sc.last_action_time == 1000.0
    clock.advance(9.99)
    assert sc.decide(low, clock.now()).reason == "cooldown"
    clock.advance(0.01)
    # the launch has not registered yet: wait for it rather than launching another
    assert sc.decide(low, clock.now(), num_pending=1).reason == "launch-pending"
    assert sc.decide(low, clock.now()).action == "out"


def test_at_max(clock):
    low = [inst(f"w-{k}", 5) for k in range(4)]
    assert AutoScaler(CFG).decide(low, clock.now()).reason == "at-max"
    assert AutoScaler(CFG).decide(low[:3], clock.now(), num_pending=1).reason == "at-max"


def test_scale_in_picks_fewest_running(clock):
    table = [inst("w-1", 70, running=1), idle("w-3"), inst("w-2", 40, running=2)]
    # clipped: (70 + 100 + 40) / 3 = 70 > 60
    d = AutoScaler(CFG).decide(table, clock.now())
    assert d == ScaleDecision("in", "w-3", "freeness-high", 70.0)
    # ties on running count -> lowest id in natural order
    d = AutoScaler(CFG).decide([idle("w-10"), idle("w-2"), inst("w-1", 61)], clock.now())
    assert (d.action, d.instance_id) == ("in", "w-2")


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


def test_clipping_keeps_one_idle_instance_from_dominating(clock):
    table = [inst("a", 2), inst("b", 2), idle("big", total=10_000)]
    d = AutoScaler(CFG).decide(table, clock.now())
    assert d.reason == "in-band"
    assert d.average_freeness == pytest.approx(124 / 3)
    # the raw mean would be (2 + 2 + 10000) / 3 > 60 and scale in


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
