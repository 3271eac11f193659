"""One simulated instance: a SimEngine, its step loop in virtual time and its load reports.

Lifecycle (the scheduler's view in brackets)::

    STARTING ──(startup delay)──> ACTIVE [ACTIVE] ──(scale-in)──> DRAINING [DRAINING]
                                                                       │ empty
                                                                       v
                                                                    STOPPED (removed)

Step loop, as the real worker's: ``step()`` updates the engine at once and returns a modelled
duration d; the deltas are emitted at t + d, then the next step starts. Reports and migration
hooks between t and t + d see the post-step state, exactly as a worker sleeping out a step.
"""

from __future__ import annotations

import dataclasses
from enum import Enum

from ..engine.sim import SimEngine
from ..protocol.messages import InstanceInfo, InstanceState


class Phase(Enum):
    STARTING = "starting"
    ACTIVE = "active"
    DRAINING = "draining"
    STOPPED = "stopped"


class SimInstance:
    __slots__ = ("instance_id", "engine", "phase", "busy", "step_started", "migrating_out",
                 "migrating_in", "migrating_ids", "info", "launched_at", "stopped_at",
                 "num_steps", "busy_s", "report_phase", "version", "reported_version")

    def __init__(self, instance_id: str, engine: SimEngine, launched_at: float):
        self.instance_id = instance_id
        self.engine = engine
        self.phase = Phase.STARTING
        self.busy = False  # a step is in flight (its deltas not yet emitted)
        self.step_started = 0.0
        self.migrating_out = 0
        self.migrating_in = 0
        self.migrating_ids: set[str] = set()  # requests this instance is migrating out
        self.info: InstanceInfo | None = None  # the scheduler's copy of the last report
        self.launched_at = launched_at
        self.stopped_at: float | None = None
        self.num_steps = 0
        self.busy_s = 0.0
        self.report_phase = 0.0
        self.version = 0  # bumped on every engine mutation (step, add, migration hook)
        self.reported_version = -1  # version of the state in ``info``

    @property
    def alive(self) -> bool:
        return self.phase is Phase.ACTIVE or self.phase is Phase.DRAINING

    @property
    def draining(self) -> bool:
        return self.phase is Phase.DRAINING

    def is_empty(self) -> bool:
        """Nothing left to serve or move (a draining instance may then stop)."""
        return not self.engine.has_work() and not self.migrating_out and not self.migrating_in \
            and not self.busy

    def report_if_changed(self) -> InstanceInfo:
        """The periodic report: rebuilt only if the engine changed since the last one (an
        unchanged report is identical, its age being always 0 here)."""
        if self.version != self.reported_version or self.info is None:
            return self.report()
        return self.info

    def report(self) -> InstanceInfo:
        """Build the load report (from ``engine.load()``) and store it as the scheduler's view.

        Report age is always 0 here: every live instance reports every period, far inside the
        staleness limit, so ages cannot change a decision (stopped instances leave the view)."""
        self.reported_version = self.version
        load = self.engine.load()
        draining = self.phase is Phase.DRAINING
        if draining or self.migrating_out or self.migrating_in:
            load = dataclasses.replace(load, draining=draining,
                                       num_migrating_out=self.migrating_out,
                                       num_migrating_in=self.migrating_in)
        state = InstanceState.DRAINING if draining else InstanceState.ACTIVE
        self.info = InstanceInfo(self.instance_id, "sim://" + self.instance_id, state, load, 0.0)
        return self.info

    def cost_s(self, end: float) -> float:
        """Instance-seconds from launch (startup included) to stop or ``end``."""
        stop = self.stopped_at if self.stopped_at is not None else end
        return max(0.0, stop - self.launched_at)
