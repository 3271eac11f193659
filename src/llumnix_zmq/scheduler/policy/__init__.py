"""Scheduling policies: pure functions of reported loads (no sockets, no clock reads, randomness
only through a passed ``random.Random``), shared by the scheduler service and the simulator.

    freeness   virtual usage, freeness F, PolicyConfig (all thresholds)
    dispatch   where a new request goes (llumnix, llumnix-base, infaas++, round-robin, least-queue)
    pairing    migration source/destination pairs every pairing period
    selection  which running requests a source migrates
    autoscale  scale out/in decisions and the Launcher interface

The functions ``freeness`` and ``dispatch`` are deliberately not re-exported here: they share
their submodules' names and would shadow them (``import ...policy.dispatch as m`` would give
the function). Import them from their modules.
"""

from .autoscale import AutoScaler, Launcher, ScaleDecision
from .dispatch import NoInstance, RoundRobinState, dispatch_freeness, free_virtual_blocks
from .freeness import (
    DISPATCH_POLICIES,
    PolicyConfig,
    instance_freeness,
    virtual_usage,
)
from .pairing import MigrationPair, pair_migrations
from .selection import DEFAULT_SELECTION, SELECTION_POLICIES, select_requests

__all__ = [
    "DEFAULT_SELECTION",
    "DISPATCH_POLICIES",
    "SELECTION_POLICIES",
    "AutoScaler",
    "Launcher",
    "MigrationPair",
    "NoInstance",
    "PolicyConfig",
    "RoundRobinState",
    "ScaleDecision",
    "dispatch_freeness",
    "free_virtual_blocks",
    "instance_freeness",
    "pair_migrations",
    "select_requests",
    "virtual_usage",
]
