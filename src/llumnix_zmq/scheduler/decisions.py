"""Glue between the running scheduler and the pure policies in ``policy/``: builds the
``PolicyConfig`` from service flags, counts and logs every decision with its reason."""

from __future__ import annotations

import dataclasses
import logging
import random

from ..protocol.messages import InstanceInfo, Priority
from .policy.autoscale import AutoScaler
from .policy.dispatch import NoInstance, RoundRobinState, dispatch
from .policy.freeness import PolicyConfig
from .policy.pairing import MigrationPair, pair_migrations

log = logging.getLogger(__name__)

# SchedulerConfig field -> PolicyConfig field; a negative flag value means "policy default".
_OVERRIDES = {
    "migrate_out_threshold": "migrate_out_threshold",
    "migrate_in_threshold": "migrate_in_threshold",
    "headroom_blocks": "headroom_blocks",
    "long_prompt_tokens": "long_prompt_tokens",
    "long_prompt_min_freeness": "long_prompt_min_freeness",
    "scale_out_threshold": "scale_out_threshold",
    "scale_in_threshold": "scale_in_threshold",
}


def base_policy(name: str) -> str:
    """``pin:ID`` (tests and operators: every request to one instance, e.g. to build a skewed
    load for the migration loop to fix) migrates like ``llumnix``."""
    return "llumnix" if name.startswith("pin:") else name


def _overrides(flags: dict) -> dict:
    """Service flag values (``_OVERRIDES`` keys) -> PolicyConfig kwargs; None or a negative
    value means the policy default."""
    return {_OVERRIDES[k]: v for k, v in flags.items() if v is not None and v >= 0}


def policy_config(cfg) -> PolicyConfig:
    kwargs = _overrides({src: getattr(cfg, src) for src in _OVERRIDES})
    if cfg.autoscale_max:
        kwargs.update(min_instances=cfg.autoscale_min, max_instances=cfg.autoscale_max)
    return PolicyConfig(
        dispatch_policy=base_policy(cfg.dispatch_policy),
        enable_migration=None if cfg.enable_migration else False,  # None: llumnix policies only
        pairing_period_s=cfg.pairing_period_s,
        report_staleness_s=max(cfg.heartbeat_timeout_s, 5 * cfg.report_period_s),
        scale_cooldown_s=cfg.scale_cooldown_s,
        seed=cfg.seed,
        **kwargs,
    )


class Decider:
    def __init__(self, cfg, rng: random.Random, metrics, launcher=None):
        self.cfg = cfg
        self.policy = policy_config(cfg)
        self.rng = rng
        self.metrics = metrics
        self.rr = RoundRobinState()
        self.launcher = launcher
        self.scaler = AutoScaler(self.policy) if cfg.autoscale_max else None
        self.pending_launches: set[str] = set()
        self.started_at: float | None = None
        # after a (re)start the registry fills from worker registrations: no scaling until then
        self.grace_s = max(2.0, 2 * cfg.heartbeat_timeout_s)

    def dispatch(self, infos: list[InstanceInfo], num_prompt_tokens: int,
                 priority: Priority) -> tuple[str, str] | None:
        if self.cfg.dispatch_policy.startswith("pin:"):
            target = self.cfg.dispatch_policy[4:]
            if any(i.instance_id == target for i in infos):
                self.metrics.dispatch.labels("pin", "pinned").inc()
                return target, "pinned"
        try:
            iid, reason = dispatch(self.policy.dispatch_policy, infos, num_prompt_tokens, priority,
                                   self.rng, self.rr, cfg=self.policy)
        except NoInstance:
            self.metrics.dispatch_failures.inc()
            return None
        self.metrics.dispatch.labels(self.policy.dispatch_policy, reason).inc()
        return iid, reason

    def pairs(self, infos: list[InstanceInfo], now: float) -> list[MigrationPair]:
        if not self.cfg.enable_migration:
            return []
        pairs = pair_migrations(infos, self.policy, now)
        for p in pairs:
            self.metrics.migration_pairs.labels(p.reason).inc()
            log.debug("pair %s -> %s (%s, F %.2f -> %.2f)", p.source_id, p.destination_id,
                      p.reason, p.source_freeness, p.destination_freeness)
        return [dataclasses.replace(p, num_requests=min(p.num_requests,
                                                        self.cfg.max_migrations_per_pair))
                for p in pairs]

    async def autoscale(self, service, infos: list[InstanceInfo], now: float) -> None:
        if self.scaler is None or self.launcher is None:
            return
        if self.started_at is None:
            self.started_at = now
        if now - self.started_at < self.grace_s:
            return
        known = {i.instance_id for i in infos}
        self.pending_launches -= known
        if hasattr(self.launcher, "reap"):  # launched children that exited (drained or failed)
            self.pending_launches -= set(self.launcher.reap())
        decision = self.scaler.decide(infos, now, num_pending=len(self.pending_launches))
        if decision.action == "none":
            return
        self.metrics.scale.labels(decision.action, decision.reason).inc()
        log.info("autoscale %s (%s, avg F %s) %s", decision.action, decision.reason,
                 decision.average_freeness, decision.instance_id)
        if decision.action == "out":
            for _ in range(decision.count):
                self.pending_launches.add(self.launcher.launch())
        elif decision.action == "undrain":
            await service.set_draining(decision.instance_id, False, stop=False)
        else:
            await service.set_draining(decision.instance_id, True, stop=True)


def local_dispatch(policy: str, infos: list[InstanceInfo], num_prompt_tokens: int,
                   priority: Priority, rng: random.Random, holder, **flags) -> str | None:
    """The frontend's fallback dispatch from its last-known table (scheduler unreachable).
    ``flags``: policy settings named and read as the scheduler's (e.g. long_prompt_tokens;
    negative means the policy default)."""
    cfg = PolicyConfig(dispatch_policy=base_policy(policy), report_staleness_s=float("inf"),
                       **_overrides(flags))
    if getattr(holder, "rr_state", None) is None:
        holder.rr_state = RoundRobinState()
    try:
        iid, _ = dispatch(cfg.dispatch_policy, infos, num_prompt_tokens, priority, rng, holder.rr_state,
                          cfg=cfg)
    except NoInstance:
        return None
    return iid
