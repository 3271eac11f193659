"""Auto-scaling (Llumnix §4.4.3): keep the cluster's average freeness in a band [x, y].

The average freeness is that of the cluster taken as one instance, the way the Llumnix
artifact's ``avg_load`` scaling policy computes it (free blocks and requests summed over
instances, then divided), not a mean of per-instance F::

    F_c = (Σ_ACTIVE M  +  pending · M̄  −  Σ_LIVE U) / max(Σ_LIVE N, 1)       (+inf if ΣN = 0)

    U = real blocks of running requests + demand of ALL waiting requests + priority headroom
    N = running + waiting requests          M̄ = mean M of the ACTIVE instances

LIVE = ACTIVE or DRAINING with a fresh report. A draining instance adds its load but not its
capacity (its requests are leaving for the others, or finishing where they are): F_c is the
freeness the cluster will have once the drain is over. The fake infinite-usage request that
pushes its requests out is a migration device (freeness.py), not load, so it stays out of F_c.
An idle instance adds M free blocks and no request; it cannot hide an overloaded one the way it
did in a mean of clipped per-instance F. A launch not yet registered counts as an idle instance.

Scale-in is judged on the cluster *without* the victim (its capacity removed, its requests kept):
``F_c − M_victim / ΣN > y``. An instance is drained only if the rest still sit above the band's
top, so a scale-in cannot by itself push F_c under x (no out-right-after-in flapping).

``AutoScaler.decide`` is evaluated in this order; the first row that applies wins:

| condition                                                   | action  | reason            |
|-------------------------------------------------------------|---------|-------------------|
| ACTIVE + pending launches < min_instances                   | out ×k  | below-min         |
| ACTIVE + pending launches > max_instances                   | in      | above-max         |
| less than scale_cooldown_s since the last action            | none    | cooldown          |
| no ACTIVE instance with a fresh report                      | none    | no-reports        |
| F_c < x, an instance is draining                            | undrain | freeness-low      |
| F_c < x, ACTIVE + pending >= max                            | none    | at-max            |
| F_c < x                                                     | out ×k  | freeness-low      |
| F_c without the victim > y, ACTIVE + pending - 1 < min      | none    | at-min            |
| F_c without the victim > y, an instance already draining    | none    | drain-in-progress |
| F_c without the victim > y, a launch still pending          | none    | launch-pending    |
| F_c without the victim > y                                  | in      | freeness-high     |
| otherwise                                                   | none    | in-band           |

"out ×k" launches k instances at once: the fewest idle instances that bring F_c back to x
(capped by max_instances), as the artifact does. "undrain" cancels the drain instead of
launching (the artifact's terminate-scale-down): the instance is there already, no startup
delay. The victim of a scale-in is the ACTIVE instance with the fewest running requests (least
to migrate), then the fewest used blocks, then the lowest id; the caller drains it (ScaleOrder)
and migration pairing moves its requests off.

The only state is ``last_action_time``. A restarted scheduler builds a new AutoScaler with
``now=`` its start time: losing the state just restarts the cooldown, which also gives the load
table time to fill before band decisions are made.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from ...protocol.messages import InstanceInfo, InstanceState
from .freeness import (
    PolicyConfig,
    id_order_key,
    is_draining,
    is_fresh,
    summarize,
    usage_blocks,
)


class Launcher(Protocol):
    """Starts and stops instances (local processes, docker compose, Kubernetes). ``launch``
    returns the new instance's id at once; the instance counts as pending until it registers."""

    def launch(self) -> str: ...

    def stop(self, instance_id: str) -> None: ...


@dataclass(frozen=True)
class ScaleDecision:
    action: str  # "none" | "out" | "in" | "undrain"
    instance_id: str = ""  # for "in": the instance to drain; for "undrain": to reactivate
    reason: str = ""
    average_freeness: float | None = None
    count: int = 1  # for "out": how many instances to launch


@dataclass(frozen=True)
class ClusterLoad:
    """The sums F_c is made of (module docstring)."""

    capacity: float  # Σ M of fresh ACTIVE instances + pending · M̄
    usage: float  # Σ U of fresh LIVE instances
    requests: int  # Σ N of fresh LIVE instances
    mean_blocks: float  # M̄

    def freeness(self, extra_capacity: float = 0.0) -> float:
        free = self.capacity + extra_capacity - self.usage
        if self.requests == 0:
            return math.inf if free >= 0 else -math.inf
        return free / self.requests


class AutoScaler:
    def __init__(self, cfg: PolicyConfig, now: float | None = None):
        self.cfg = cfg
        self.last_action_time: float | None = now

    def decide(
        self, instances: Iterable[InstanceInfo], now: float, *, num_pending: int = 0
    ) -> ScaleDecision:
        """One decision; any action other than "none" starts the cooldown at ``now``."""
        d = self._decide(list(instances), now, num_pending)
        if d.action != "none":
            self.last_action_time = now
        return d

    def in_cooldown(self, now: float) -> bool:
        last = self.last_action_time
        return last is not None and now - last < self.cfg.scale_cooldown_s

    def _decide(self, instances: list[InstanceInfo], now: float, pending: int) -> ScaleDecision:
        cfg = self.cfg
        active = [i for i in instances if i.state == InstanceState.ACTIVE and not i.load.draining]
        draining = [i for i in instances if i.state != InstanceState.DEAD and is_draining(i)]
        count = len(active) + pending
        if count < cfg.min_instances:
            return ScaleDecision("out", reason="below-min", count=cfg.min_instances - count)
        if count > cfg.max_instances and active:
            return ScaleDecision("in", _victim(active), "above-max")
        if self.in_cooldown(now):
            return ScaleDecision("none", reason="cooldown")
        load = self.cluster_load(instances, pending)
        if load is None:
            return ScaleDecision("none", reason="no-reports")
        avg = load.freeness()
        if avg < cfg.scale_out_threshold:
            if draining:
                back = min(draining, key=lambda i: id_order_key(i.instance_id))
                return ScaleDecision("undrain", back.instance_id, "freeness-low", avg)
            room = cfg.max_instances - count
            if room <= 0:
                return ScaleDecision("none", reason="at-max", average_freeness=avg)
            k = _launches_needed(load, cfg.scale_out_threshold, room)
            return ScaleDecision("out", reason="freeness-low", average_freeness=avg, count=k)
        victim = _victim([i for i in active if is_fresh(i, cfg)] or active)
        after = load.freeness(-_blocks_of(instances, victim))
        if after > cfg.scale_in_threshold:
            if count - 1 < cfg.min_instances:
                return ScaleDecision("none", reason="at-min", average_freeness=avg)
            if draining:
                return ScaleDecision("none", reason="drain-in-progress", average_freeness=avg)
            if pending > 0:
                return ScaleDecision("none", reason="launch-pending", average_freeness=avg)
            return ScaleDecision("in", victim, "freeness-high", avg)
        return ScaleDecision("none", reason="in-band", average_freeness=avg)

    def cluster_load(self, instances: list[InstanceInfo], pending: int = 0) -> ClusterLoad | None:
        """The sums of F_c over fresh reports; None if no ACTIVE instance reported freshly."""
        headroom = self.cfg.effective_headroom
        capacity = usage = 0.0
        requests = n_active = 0
        for i in instances:
            if i.state == InstanceState.DEAD or not is_fresh(i, self.cfg):
                continue
            s = summarize(i.load)
            usage += usage_blocks(s, headroom) + s.rest_demand
            requests += s.num_running + s.num_waiting
            if i.state == InstanceState.ACTIVE and not i.load.draining:
                capacity += i.load.num_blocks_total
                n_active += 1
        if n_active == 0:
            return None
        mean = capacity / n_active
        return ClusterLoad(capacity + pending * mean, usage, requests, mean)

    def average_freeness(self, instances: list[InstanceInfo], pending: int = 0) -> float | None:
        """F_c of the module docstring; None if no ACTIVE instance reported freshly."""
        load = self.cluster_load(instances, pending)
        return None if load is None else load.freeness()


def _launches_needed(load: ClusterLoad, target: float, room: int) -> int:
    """The fewest idle instances (1..room) that lift F_c to ``target``."""
    k = 1
    while k < room and load.freeness(k * load.mean_blocks) < target:
        k += 1
    return k


def _blocks_of(instances: list[InstanceInfo], instance_id: str) -> int:
    return next(i.load.num_blocks_total for i in instances if i.instance_id == instance_id)


def _victim(active: list[InstanceInfo]) -> str:
    best = min(active, key=lambda i: (i.load.num_running, i.load.num_blocks_used,
                                      id_order_key(i.instance_id)))
    return best.instance_id
