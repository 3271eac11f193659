"""StepPacer: deadlines chain while busy, small host lateness is made up, large lateness and idle
time are not (FakeClock, exact seconds)."""

from __future__ import annotations

import pytest

from llumnix_zmq.clock import FakeClock
from llumnix_zmq.worker.pacing import StepPacer


def test_on_time_host_sleeps_the_modelled_time():
    clock = FakeClock(10.0)
    p = StepPacer(clock, time_scale=1.0, max_lag_s=0.02)
    assert p.begin() == 10.0
    clock.advance(0.001)  # the step's own host work
    assert p.end(0.030) == pytest.approx(0.029)
    clock.advance(0.029)
    assert p.begin() == pytest.approx(10.030)
    assert p.end(0.030) == pytest.approx(0.030)


def test_late_wake_is_made_up_on_the_next_step():
    clock = FakeClock(0.0)
    p = StepPacer(clock, 1.0, 0.02)
    p.begin()
    assert p.end(0.030) == pytest.approx(0.030)
    clock.advance(0.035)  # woke 5 ms late (descheduled)
    assert p.begin() == pytest.approx(0.030)  # the step is modelled to start on time
    assert p.end(0.030) == pytest.approx(0.025)  # and the next sleep is 5 ms shorter
    clock.advance(0.025)
    assert p.begin() == pytest.approx(0.060) and p.lost_s == 0.0


def test_lateness_beyond_the_cap_and_idle_time_are_not_made_up():
    clock = FakeClock(0.0)
    p = StepPacer(clock, 1.0, 0.02)
    p.begin()
    p.end(0.030)
    clock.advance(0.130)  # 100 ms late: 80 ms lost, 20 ms made up
    assert p.begin() == pytest.approx(0.110) and p.lost_s == pytest.approx(0.080)
    assert p.end(0.030) == pytest.approx(0.010)
    p.idle()
    clock.advance(5.0)
    assert p.begin() == pytest.approx(5.130)  # a fresh chain: no credit for idle time
    assert p.end(0.010) == pytest.approx(0.010)


def test_time_scale_and_misuse():
    clock = FakeClock(0.0)
    p = StepPacer(clock, time_scale=0.5)
    p.begin()
    assert p.end(0.040) == pytest.approx(0.020)
    with pytest.raises(RuntimeError):
        StepPacer(clock).end(0.01)
    with pytest.raises(ValueError):
        StepPacer(clock, time_scale=-1)
