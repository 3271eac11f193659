"""The simulated cluster: instances, the global scheduler's decisions and migrations, driven by
one event queue in virtual time (no sockets, no sleeps).

Events (all handlers below are ``_on_*``):

| event          | when                                  | does                                   |
|----------------|---------------------------------------|----------------------------------------|
| arrival        | each request's arrival time           | dispatch (policy code) → add_request   |
| step end       | step start + modelled step duration   | emit deltas (metrics), start next step |
| report         | every report_period_s per instance    | InstanceInfo from engine.load()        |
|                | (+ at once on arrival/finish/migration| (report_on_change, like the worker)    |
| pairing        | every pairing_period_s                | pair_migrations → source-side          |
|                |                                       | select_requests → staged migrations;   |
|                |                                       | then AutoScaler.decide                 |
| migration stage| per the cost model (sim/migration.py) | copy, suspend, commit or abort         |
| activate       | launch + startup_delay_s              | a scaled-out instance joins            |
|                |                                       | (an "undrain" reactivates a draining   |
|                |                                       | instance at once: no startup delay)    |

The scheduler sees only the last report of each instance (``SimInstance.info``), as the real
one does; the llumlet side (selection, migration) reads its own engine directly.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from ..clock import FakeClock
from ..engine.base import EngineRequest
from ..engine.sim import SimEngine
from ..protocol.messages import Priority, SamplingParams
from ..scheduler.policy.autoscale import AutoScaler
from ..scheduler.policy.dispatch import NoInstance, RoundRobinState, dispatch
from ..scheduler.policy.freeness import summarize
from ..scheduler.policy.pairing import MigrationPair, pair_migrations
from ..scheduler.policy.selection import select_requests
from ..workload import WorkItem
from .config import SimulationConfig
from .events import EventQueue
from .instance import Phase, SimInstance
from .metrics import FragmentationSampler, RequestMetrics
from .migration import StagedMigration


class StuckError(RuntimeError):
    """The event queue ran dry with requests unfinished (a bug, never a normal outcome)."""


class Simulation:
    def __init__(self, cfg: SimulationConfig, items: Sequence[WorkItem],
                 on_progress: Callable[[int], None] | None = None):
        self.cfg = cfg
        self.items = items
        self.clock = FakeClock()
        self.queue = EventQueue(self.clock)
        self.pcfg = cfg.policy_config()
        self.cost = cfg.migration_cost()
        self.rng = random.Random(cfg.seed)
        self.rr = RoundRobinState()
        self.engine_cfg = cfg.engine_config()
        self.engine_priorities = cfg.uses_engine_priorities()
        self.instances: dict[str, SimInstance] = {}  # every instance ever launched
        self.live: list[SimInstance] = []  # registered with the scheduler (ACTIVE, DRAINING)
        self.request_ids = [f"r{i}" for i in range(len(items))]
        self.metrics = RequestMetrics(items, self.request_ids)
        self.frag = FragmentationSampler()
        self.scaler = AutoScaler(self.pcfg, now=0.0) if cfg.autoscale else None
        self.pending_launches = 0
        self.on_progress = on_progress
        self.finished = 0
        self.end_time = 0.0
        self.done = False
        self.truncated = False  # stopped at max_sim_seconds with requests unfinished
        self.counts = {"dispatch_retries": 0, "scale_out": 0, "scale_in": 0, "undrain": 0,
                       "stopped": 0,
                       "migrations_started": 0, "migrations_committed": 0}
        self.migration_outcomes: dict[str, int] = {}
        self.migration_reasons: dict[str, int] = {}
        self.downtimes: list[float] = []
        self.migration_blocks = 0
        self.instance_timeline: list[tuple[float, int]] = []
        self._mig_ids = 0
        self._prompt = [97 + i % 26 for i in range(self.engine_cfg.max_model_len + 1)]
        self._sampling: dict[int, SamplingParams] = {}
        self.frontend_latency_s = cfg.frontend_latency_ms / 1000.0
        self.step_overhead_s = cfg.step_overhead_ms / 1000.0

    # --- setup and run --------------------------------------------------------------------
    def run(self) -> None:
        for _ in range(self.cfg.initial_instances()):
            self._activate(self._new_instance())
        if self.items:
            self.queue.at(self.items[0].arrival_s, self._on_arrival, 0)
        if self.pcfg.migration_enabled or self.scaler is not None:
            self.queue.at(self.cfg.pairing_period_s, self._on_pairing)
        if not self.items:
            return
        if self.cfg.max_sim_seconds is not None:
            self.queue.at(self.cfg.max_sim_seconds, self._on_deadline)
        self.queue.run()
        if not self.done:
            raise StuckError(f"event queue empty at t={self.clock.t:.3f}s with "
                             f"{len(self.items) - self.finished} requests unfinished")

    def _new_instance(self) -> SimInstance:
        iid = f"i{len(self.instances)}"
        inst = SimInstance(iid, SimEngine(self.engine_cfg, self.clock), self.clock.t)
        inst.report_phase = (len(self.instances) * 0.6180339887) % 1.0 * self.cfg.report_period_s
        self.instances[iid] = inst
        return inst

    def _activate(self, inst: SimInstance) -> None:
        inst.phase = Phase.ACTIVE
        self.live.append(inst)
        inst.report()
        self._timeline()
        self.queue.after(inst.report_phase or self.cfg.report_period_s, self._on_report, inst)

    def _on_launched(self, inst: SimInstance) -> None:
        self.pending_launches -= 1
        self._activate(inst)

    def _timeline(self) -> None:
        self.instance_timeline.append((self.clock.t, len(self.live) + self.pending_launches))

    def _on_deadline(self, _arg) -> None:
        if not self.done:
            self.truncated = True
            self._end()

    def _end(self) -> None:
        self.done = True
        self.end_time = self.clock.t
        self.queue.stop()

    # --- requests -------------------------------------------------------------------------
    def _infos(self) -> list:
        return [i.info for i in self.live]

    def _on_arrival(self, idx: int) -> None:
        if idx + 1 < len(self.items):
            self.queue.at(self.items[idx + 1].arrival_s, self._on_arrival, idx + 1)
        if self.frontend_latency_s > 0.0:
            self.queue.after(self.frontend_latency_s, self._dispatch, idx)
        else:
            self._dispatch(idx)

    def _dispatch(self, idx: int) -> None:
        item = self.items[idx]
        prio = Priority.HIGH if item.priority else Priority.NORMAL
        try:
            iid, _ = dispatch(self.cfg.policy, self._infos(), item.prompt_tokens, prio, self.rng,
                              self.rr, cfg=self.pcfg)
        except NoInstance:
            self.counts["dispatch_retries"] += 1
            self.queue.after(self.cfg.dispatch_retry_s, self._dispatch, idx)
            return
        inst = self.instances[iid]
        inst.version += 1
        sampling = self._sampling.get(item.output_tokens)
        if sampling is None:
            sampling = self._sampling[item.output_tokens] = SamplingParams(
                max_tokens=item.output_tokens, ignore_eos=True)
        inst.engine.add_request(EngineRequest(
            self.request_ids[idx], self._prompt[:item.prompt_tokens], sampling,
            prio if self.engine_priorities else Priority.NORMAL, arrival_time=item.arrival_s))
        if not inst.busy:
            self._step(inst)
        if self.cfg.report_on_change:
            inst.report()

    # --- the step loop --------------------------------------------------------------------
    def _kick(self, inst: SimInstance) -> None:
        if not inst.busy and inst.alive:
            self._step(inst)

    def _step(self, inst: SimInstance) -> None:
        eng = inst.engine
        if not eng.has_work():
            return
        res = eng.step()
        inst.version += 1
        if res.num_preempted:
            self._note_preemptions(inst)
        d = res.duration_s
        if d <= 0.0:  # nothing could run (blocks held by migrations): the next change kicks it
            return
        d += self.step_overhead_s
        inst.busy = True
        inst.step_started = self.clock.t
        inst.num_steps += 1
        inst.busy_s += d
        self.queue.after(d, self._on_step_end, (inst, res))

    def _on_step_end(self, arg) -> None:
        inst, res = arg
        inst.busy = False
        done = self.metrics.on_deltas(res.deltas, self.clock.t) if res.deltas else 0
        self._step(inst)
        if done:
            self.finished += done
            if self.on_progress is not None:
                self.on_progress(done)
            if self.finished >= len(self.items):
                return self._end()
            if self.cfg.report_on_change:
                inst.report()
        if inst.phase is Phase.DRAINING and inst.is_empty():
            self._stop(inst)

    def _note_preemptions(self, inst: SimInstance) -> None:
        """Requests pushed back to the queue after producing tokens (preempted while decoding)."""
        items, index, t = self.items, self.metrics.index, self.clock.t
        for r in inst.engine.load().requests:
            if not r.running and r.num_tokens > items[index[r.request_id]].prompt_tokens:
                self.metrics.on_preempted(r.request_id, t)

    # --- reports, pairing, scaling ----------------------------------------------------------
    def _on_report(self, inst: SimInstance) -> None:
        if self.done or not inst.alive:
            return
        load = inst.report_if_changed().load
        self.frag.sample(load.num_blocks_total - load.num_blocks_used, summarize(load).head_demand,
                         load.num_blocks_total)
        self.queue.after(self.cfg.report_period_s, self._on_report, inst)

    def _on_pairing(self, _arg) -> None:
        if self.done:
            return
        now = self.clock.t
        if self.pcfg.migration_enabled:
            for pair in pair_migrations(self._infos(), self.pcfg, now):
                self._order_migration(pair)
        if self.scaler is not None:
            self._autoscale(now)
        self.queue.after(self.cfg.pairing_period_s, self._on_pairing)

    def _order_migration(self, pair: MigrationPair) -> None:
        src = self.instances.get(pair.source_id)
        dst = self.instances.get(pair.destination_id)
        if src is None or dst is None or not src.alive or dst.phase is not Phase.ACTIVE:
            return
        n = min(pair.num_requests, self.cfg.max_migrations_per_pair,
                self.cfg.max_concurrent_migrations - src.migrating_out)
        if n <= 0:
            return
        busy = src.migrating_ids
        cands = [c for c in src.engine.migration_candidates() if c.request_id not in busy]
        for c in select_requests(cands, n, self.cfg.selection, reason=pair.reason,
                                 max_blocks=pair.max_blocks):
            self._mig_ids += 1
            self.counts["migrations_started"] += 1
            self.migration_reasons[pair.reason] = self.migration_reasons.get(pair.reason, 0) + 1
            StagedMigration(self, self._mig_ids, src, dst, c.request_id, pair.reason,
                            self.cost).start()
        if self.cfg.report_on_change:
            src.report()
            dst.report()

    def on_migration_done(self, mig: StagedMigration, ok: bool) -> None:
        self.migration_outcomes[mig.outcome] = self.migration_outcomes.get(mig.outcome, 0) + 1
        self.migration_blocks += mig.blocks_copied
        if ok:
            self.counts["migrations_committed"] += 1
            self.downtimes.append(mig.downtime_s)
        for inst in (mig.src, mig.dst):
            self._kick(inst)
            if inst.phase is Phase.DRAINING and inst.is_empty():
                self._stop(inst)
            elif inst.alive and self.cfg.report_on_change:
                inst.report()

    def _autoscale(self, now: float) -> None:
        d = self.scaler.decide(self._infos(), now, num_pending=self.pending_launches)
        if d.action == "out":
            for _ in range(d.count):
                self.counts["scale_out"] += 1
                inst = self._new_instance()
                self.pending_launches += 1
                self.queue.after(self.cfg.startup_delay_s, self._on_launched, inst)
            self._timeline()
        elif d.action == "undrain":
            inst = self.instances[d.instance_id]
            if inst.phase is not Phase.DRAINING:
                return
            self.counts["undrain"] += 1
            inst.phase = Phase.ACTIVE
            inst.version += 1
            inst.report()
        elif d.action == "in":
            inst = self.instances[d.instance_id]
            if inst.phase is not Phase.ACTIVE:
                return
            self.counts["scale_in"] += 1
            inst.phase = Phase.DRAINING
            inst.version += 1
            if inst.is_empty():
                self._stop(inst)
            else:
                inst.report()

    def _stop(self, inst: SimInstance) -> None:
        inst.phase = Phase.STOPPED
        inst.stopped_at = self.clock.t
        inst.info = None
        self.live.remove(inst)
        self.counts["stopped"] += 1
        self._timeline()
