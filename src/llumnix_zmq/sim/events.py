"""The event queue of the simulator: a binary heap of ``(time, seq, handler, arg)``.

``seq`` is a global insertion counter, so events at the same virtual time run in the order they
were scheduled (FIFO) and a run is deterministic; handlers are never compared. The queue owns
the virtual clock: ``pop`` moves ``clock.t`` to the event's time (time never runs backwards).
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heappop, heappush
from typing import Any

from ..clock import FakeClock

Handler = Callable[[Any], None]


class EventQueue:
    __slots__ = ("_heap", "_seq", "clock", "num_events", "stopped")

    def __init__(self, clock: FakeClock | None = None):
        self._heap: list[tuple[float, int, Handler, Any]] = []
        self._seq = 0
        self.clock = clock or FakeClock()
        self.num_events = 0
        self.stopped = False

    @property
    def now(self) -> float:
        return self.clock.t

    def at(self, t: float, handler: Handler, arg: Any = None) -> None:
        """Run ``handler(arg)`` at virtual time ``t`` (clamped to now: never in the past)."""
        now = self.clock.t
        heappush(self._heap, (t if t > now else now, self._seq, handler, arg))
        self._seq += 1

    def after(self, dt: float, handler: Handler, arg: Any = None) -> None:
        self.at(self.clock.t + dt, handler, arg)

    def stop(self) -> None:
        """Make ``run`` return after the current event."""
        self.stopped = True

    def run(self) -> None:
        """Pop and run events until the queue is empty or a handler calls ``stop()``."""
        heap, clock = self._heap, self.clock
        n = 0
        while heap and not self.stopped:
            t, _, handler, arg = heappop(heap)
            clock.t = t
            handler(arg)
            n += 1
        self.num_events += n

    def __len__(self) -> int:
        return len(self._heap)
