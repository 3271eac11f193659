"""Discrete-event simulator: the same policies, llumlet decisions and SimEngines as the mesh,
driven by a virtual clock (no sockets, no sleeps).

    events     the event heap and virtual clock
    instance   one SimEngine, its step loop and load reports
    migration  staged live migration in virtual time, with its cost model
    cluster    Simulation: dispatch, reports, pairing, migrations, auto-scaling as events
    metrics    per-request timings and per-run statistics
    config     SimulationConfig (every flag of ``llumnix-zmq sim``)
    runner     run_simulation(config) -> result dict
    cli        ``llumnix-zmq sim ...``
"""

from .cluster import Simulation, StuckError
from .config import POLICIES, SimulationConfig
from .migration import MigrationCost, StagedMigration
from .runner import build_items, run_simulation

__all__ = ["POLICIES", "MigrationCost", "Simulation", "SimulationConfig", "StagedMigration",
           "StuckError", "build_items", "run_simulation"]
