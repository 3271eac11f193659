"""Auto-scaling (Llumnix §4.4.3): keep the average freeness of ACTIVE instances in a band.

``AutoScaler.decide`` is evaluated in this order; the first row that applies wins:

| condition                                                   | action | reason             |
|-------------------------------------------------------------|--------|--------------------|
| ACTIVE + pending launches < min_instances                   | out    | below-min          |
| ACTIVE + pending launches > max_instances                   | in     | above-max          |
| less than scale_cooldown_s since the last out/in            | none   | cooldown           |
| no ACTIVE instance with a fresh report                      | none   | no-reports         |
| avg F < scale_out_threshold, ACTIVE + pending >= max         | none   | at-max             |
| avg F < scale_out_threshold, a launch still pending         | none   | launch-pending     |
| avg F < scale_out_threshold                                 | out    | freeness-low       |
| avg F > scale_in_threshold, ACTIVE + pending - 1 < min      | none   | at-min             |
| avg F > scale_in_threshold, an instance already draining    | none   | drain-in-progress  |
| avg F > scale_in_threshold                                  | in     | freeness-high      |
| otherwise                                                   | none   | in-band            |

"ACTIVE" means state ACTIVE and not ``load.draining``. The min/max rows ignore the cooldown:
pending launches are counted, so repeating them cannot overshoot. The average is over ACTIVE
instances with fresh reports, each F clipped to ±``cfg.clip`` (an idle instance has
F = M, thousands of blocks, and would otherwise hide overloaded ones). Scale-in picks the ACTIVE
instance with the fewest running requests (least to migrate), ties by lowest id; the caller drains
it (ScaleOrder) and migration pairing moves its requests off.

The only state is ``last_action_time``. A restarted scheduler builds a new AutoScaler with
``now=`` its start time: losing the state just restarts the cooldown, which also gives the load
table time to fill before band decisions are made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol

from ...protocol.messages import InstanceInfo, InstanceState
from .freeness import PolicyConfig, freeness, id_order_key, is_draining, is_fresh


class Launcher(Protocol):
    """Starts and stops instances (local processes, docker compose, Kubernetes). ``launch``
    returns the new instance's id at once; the instance counts as pending until it registers."""

    def launch(self) -> str: ...

    def stop(self, instance_id: str) -> None: ...


@dataclass(frozen=True)
class ScaleDecision:
    action: str  # "none" | "out" | "in"
    instance_id: str = ""  # for "in": the instance to drain
    reason: str = ""
    average_freeness: float | None = None


class AutoScaler:
    def __init__(self, cfg: PolicyConfig, now: float | None = None):
        self.cfg = cfg
        self.last_action_time: float | None = now

    def decide(
        self, instances: Iterable[InstanceInfo], now: float, *, num_pending: int = 0
    ) -> ScaleDecision:
        """One decision; an "out" or "in" starts the cooldown at ``now``."""
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
        count = len(active) + pending
        if count < cfg.min_instances:
            return ScaleDecision("out", reason="below-min")
        if count > cfg.max_instances and active:
            return ScaleDecision("in", _victim(active), "above-max")
        if self.in_cooldown(now):
            return ScaleDecision("none", reason="cooldown")
        avg = self.average_freeness(active)
        if avg is None:
            return ScaleDecision("none", reason="no-reports")
        if avg < cfg.scale_out_threshold:
            if count >= cfg.max_instances:
                return ScaleDecision("none", reason="at-max", average_freeness=avg)
            if pending > 0:
                return ScaleDecision("none", reason="launch-pending", average_freeness=avg)
            return ScaleDecision("out", reason="freeness-low", average_freeness=avg)
        if avg > cfg.scale_in_threshold:
            if count - 1 < cfg.min_instances:
                return ScaleDecision("none", reason="at-min", average_freeness=avg)
            if any(is_draining(i) for i in instances if i.state != InstanceState.DEAD):
                return ScaleDecision("none", reason="drain-in-progress", average_freeness=avg)
            return ScaleDecision("in", _victim(active), "freeness-high", avg)
        return ScaleDecision("none", reason="in-band", average_freeness=avg)

    def average_freeness(self, active: list[InstanceInfo]) -> float | None:
        """Mean clipped F over ``active`` instances with fresh reports; None if there are none."""
        clip = self.cfg.clip
        fs = [
            min(max(freeness(i.load, self.cfg), -clip), clip)
            for i in active
            if is_fresh(i, self.cfg)
        ]
        return sum(fs) / len(fs) if fs else None


def _victim(active: list[InstanceInfo]) -> str:
    best = min(active, key=lambda i: (i.load.num_running, id_order_key(i.instance_id)))
    return best.instance_id
