"""Pacing of modelled step time (the ``sim`` engine): when the next engine step may start.

A sim step "runs" for its modelled device time; the worker sleeps it off against a deadline so
its own bookkeeping between steps (emitting tokens, reports, handlers) overlaps the modelled
device time, as host work overlaps a GPU's. Deadlines chain while the engine stays busy: step
k+1 is due when step k's modelled time ends, even if the host woke late (descheduled on a busy
machine), and the lateness is made up by sleeping less on the next steps, as a device that kept
computing would have. Lateness beyond ``max_lag_s``, and any idle time, is not made up: the
chain restarts at the present (no credit for idle time, no burst of zero-length steps after a
long stall).

    pacer = StepPacer(clock, time_scale=1.0)
    pacer.begin()                      # before each step
    result = engine.step()
    await asyncio.sleep(pacer.end(result.duration_s))
    ...
    pacer.idle()                       # when the engine has no work

Pure (no sleeping inside): the caller sleeps, tests drive it with a FakeClock.
"""

from __future__ import annotations

from ..clock import Clock

MAX_LAG_S = 0.02  # host lateness made up on later steps (a few ms is the usual wake-up jitter)


class StepPacer:
    def __init__(self, clock: Clock, time_scale: float = 1.0, max_lag_s: float = MAX_LAG_S):
        if time_scale < 0 or max_lag_s < 0:
            raise ValueError("time_scale and max_lag_s must be >= 0")
        self.clock = clock
        self.time_scale = time_scale
        self.max_lag_s = max_lag_s
        self.deadline: float | None = None  # when the running step's modelled time ends
        self.lost_s = 0.0  # lateness that was not made up (beyond max_lag_s)

    def begin(self) -> float:
        """A step starts: returns its modelled start (the previous deadline, or now)."""
        now = self.clock.now()
        if self.deadline is None:
            self.deadline = now
        elif now - self.deadline > self.max_lag_s:
            self.lost_s += now - self.deadline - self.max_lag_s
            self.deadline = now - self.max_lag_s
        return self.deadline

    def end(self, duration_s: float) -> float:
        """The step's modelled duration is known: seconds to sleep before the next one."""
        if self.deadline is None:
            raise RuntimeError("end() without begin()")
        self.deadline += max(0.0, duration_s) * self.time_scale
        return max(0.0, self.deadline - self.clock.now())

    def idle(self) -> None:
        """The engine ran out of work: the next step starts a new chain."""
        self.deadline = None
