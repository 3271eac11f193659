"""Virtual usage and freeness (Llumnix §4.4.1), and the thresholds every policy reads.

Per instance, from its last ``InstanceLoad``::

    ΣV = Σ real blocks of RUNNING requests                     (physical usage)
       + blocks held for no running request                     (reserved: e.g. blocks
         (num_blocks_used − the above, when positive)            pre-allocated for an
                                                                 incoming migration)
       + demand of the head-of-line WAITING request             (de-fragmentation; once)
       + headroom_blocks × number of RUNNING HIGH requests       (priority headroom)
       = +inf when the instance is draining                      (scale-in via migration)

    F  = (M − ΣV) / max(B, 1)     M = num_blocks_total, B = number of running requests

F is "blocks each running request may still grow by" (× block_size = decode steps left); it is
negative when the queue's head cannot be admitted. Everything here is a pure function of the
report: no clock reads, no randomness, O(#requests) per instance.

A report without per-request detail (``requests == ()``) falls back to ΣV = num_blocks_used
with no head-of-line demand and no headroom (the worker did not say more).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

from ...protocol.messages import InstanceInfo, InstanceLoad, InstanceState, Priority

DISPATCH_POLICIES = ("llumnix", "llumnix-base", "infaas++", "round-robin", "least-queue")
MIGRATING_POLICIES = ("llumnix", "llumnix-base")


@dataclass(frozen=True)
class PolicyConfig:
    """Every threshold of dispatch, pairing and auto-scaling. Freeness units: blocks per running
    request. Defaults follow the Llumnix artifact (its "load" is −F: migrate-out −3, scale-up
    −10, scale-down −60) and assume block_size 16, i.e. F = 3 ≈ 48 decode steps of room."""

    # headroom reserved per running HIGH-priority request (blocks); 0 disables priorities.
    headroom_blocks: int = 4
    # pairing: sources have F < migrate_out_threshold, destinations F > migrate_in_threshold.
    # The gap between the two keeps an instance from flipping between source and destination.
    migrate_out_threshold: float = 3.0
    migrate_in_threshold: float = 10.0
    # a destination must have room (M − ΣV) for the request plus this many blocks of growth
    migrate_room_margin_blocks: int = 2
    # dispatch (llumnix, llumnix-base): a NORMAL prompt of at least this many tokens goes to the
    # instance where the fewest requests would wait for its prefill, among those whose dispatch
    # freeness stays >= long_prompt_min_freeness (dispatch.py); 0 disables
    long_prompt_tokens: int = 512
    long_prompt_min_freeness: float = 10.0
    # auto-scaling keeps the cluster's average freeness (autoscale.py: free blocks and requests
    # summed over instances, as the artifact's avg_load) in [scale_out_threshold,
    # scale_in_threshold]: below → launch, above (even without the victim) → drain one.
    scale_out_threshold: float = 10.0
    scale_in_threshold: float = 60.0
    # Formerly the clip of per-instance F in the autoscaler's mean; the aggregate average needs
    # no clip. Kept (validated, unused by the policies) so existing configs still load.
    freeness_clip: float | None = None
    min_instances: int = 1
    max_instances: int = 1024
    scale_cooldown_s: float = 60.0
    # instances whose last report is older than this are ignored by dispatch/pairing/scaling.
    report_staleness_s: float = 1.0
    pairing_period_s: float = 0.1
    dispatch_policy: str = "llumnix"
    # None: migrate only under the llumnix policies (the baselines never migrate).
    enable_migration: bool | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dispatch_policy not in DISPATCH_POLICIES:
            raise ValueError(f"unknown dispatch policy {self.dispatch_policy!r}")
        if self.migrate_out_threshold > self.migrate_in_threshold:
            raise ValueError("migrate_out_threshold must be <= migrate_in_threshold")
        if self.scale_out_threshold > self.scale_in_threshold:
            raise ValueError("scale_out_threshold must be <= scale_in_threshold")
        if self.freeness_clip is not None and self.freeness_clip <= self._band_extent():
            raise ValueError("freeness_clip must exceed |scale_in/out_threshold|")
        if not 0 <= self.min_instances <= self.max_instances:
            raise ValueError("need 0 <= min_instances <= max_instances")
        if self.headroom_blocks < 0:
            raise ValueError("headroom_blocks must be >= 0")
        if self.long_prompt_tokens < 0:
            raise ValueError("long_prompt_tokens must be >= 0")

    def _band_extent(self) -> float:
        return max(abs(self.scale_in_threshold), abs(self.scale_out_threshold))

    @property
    def clip(self) -> float:
        """The effective freeness_clip."""
        if self.freeness_clip is not None:
            return self.freeness_clip
        return 2.0 * max(self._band_extent(), 1.0)

    @property
    def priority_aware(self) -> bool:
        """llumnix-base is Llumnix without priorities: HIGH is treated as NORMAL everywhere."""
        return self.dispatch_policy != "llumnix-base" and self.headroom_blocks > 0

    @property
    def effective_headroom(self) -> int:
        return self.headroom_blocks if self.priority_aware else 0

    @property
    def migration_enabled(self) -> bool:
        if self.enable_migration is not None:
            return self.enable_migration
        return self.dispatch_policy in MIGRATING_POLICIES


@dataclass(frozen=True)
class LoadSummary:
    """One pass over a report's requests; what every formula needs."""

    running_blocks: int
    head_demand: int  # blocks the head-of-line waiting request needs (0 if none)
    rest_demand: int  # demand of the waiting requests behind the head
    num_running: int
    num_waiting: int
    num_high_running: int
    num_normal_running: int
    # blocks in use that no running request holds: an incoming migration's pre-allocation
    # (its request is not running here yet), a suspended request's
    reserved_blocks: int = 0
    # M − running − reserved − head − rest: the free blocks once the whole queue is admitted,
    # before any HIGH headroom (dispatch scores every instance per request from this)
    free_after_queue: int = 0


# Memo of summaries by load identity. Reports are immutable and replaced whole, so a load seen
# again (dispatch after dispatch between two reports) is summarized once. Entries hold the load
# itself, so its id cannot be reused while cached; the memo is simply emptied when full.
_MEMO_MAX = 8192
_memo: dict[int, tuple[InstanceLoad, LoadSummary]] = {}


def summarize(load: InstanceLoad) -> LoadSummary:
    hit = _memo.get(id(load))
    if hit is not None and hit[0] is load:
        return hit[1]
    if len(_memo) >= _MEMO_MAX:
        _memo.clear()
    s = _summarize(load)
    _memo[id(load)] = (load, s)
    return s


def _summarize(load: InstanceLoad) -> LoadSummary:
    reqs = load.requests
    if not reqs:
        return LoadSummary(load.num_blocks_used, 0, 0, load.num_running, load.num_waiting, 0, 0,
                           0, load.num_blocks_total - load.num_blocks_used)
    running_blocks = head = rest = n_run = n_wait = n_high = 0
    high = Priority.HIGH
    for r in reqs:
        if r.running:
            running_blocks += r.num_blocks
            n_run += 1
            if r.priority == high:
                n_high += 1
        elif n_wait == 0:
            head = r.num_blocks
            n_wait = 1
        else:
            rest += r.num_blocks
            n_wait += 1
    reserved = max(0, load.num_blocks_used - running_blocks)
    return LoadSummary(running_blocks, head, rest, n_run, n_wait, n_high, n_run - n_high,
                       reserved,
                       load.num_blocks_total - running_blocks - reserved - head - rest)


def is_draining(info_or_load: InstanceInfo | InstanceLoad) -> bool:
    if isinstance(info_or_load, InstanceInfo):
        return info_or_load.state == InstanceState.DRAINING or info_or_load.load.draining
    return info_or_load.draining


def usage_blocks(s: LoadSummary, headroom_blocks: int) -> int:
    """ΣV of a non-draining instance."""
    return (s.running_blocks + s.reserved_blocks + s.head_demand
            + headroom_blocks * s.num_high_running)


def virtual_usage(load: InstanceLoad, cfg: PolicyConfig, *, draining: bool = False) -> float:
    """ΣV in blocks; +inf when the instance drains (``load.draining`` or ``draining=True``)."""
    if draining or load.draining:
        return math.inf
    return float(usage_blocks(summarize(load), cfg.effective_headroom))


def freeness(load: InstanceLoad, cfg: PolicyConfig, *, draining: bool = False) -> float:
    """F = (M − ΣV) / max(B, 1); −inf when draining. May be negative."""
    if draining or load.draining:
        return -math.inf
    s = summarize(load)
    return (load.num_blocks_total - usage_blocks(s, cfg.effective_headroom)) / max(s.num_running, 1)


def instance_freeness(info: InstanceInfo, cfg: PolicyConfig) -> float:
    """F of a registry entry: InstanceState.DRAINING counts as draining too."""
    return freeness(info.load, cfg, draining=info.state == InstanceState.DRAINING)


def is_fresh(info: InstanceInfo, cfg: PolicyConfig) -> bool:
    return info.report_age_s <= cfg.report_staleness_s


def blocks_for_tokens(num_tokens: int, block_size: int) -> int:
    """Blocks a prompt of num_tokens needs (at least one)."""
    return max(1, -(-num_tokens // max(block_size, 1)))


_DIGITS = re.compile(r"(\d+)")


@functools.lru_cache(maxsize=1 << 16)
def id_order_key(instance_id: str) -> tuple:
    """Natural order for instance ids ("w-2" before "w-10"); the tie-break "lowest id".
    Memoized: every tie in dispatch sorts the tied ids by it (idle instances tie often)."""
    parts = _DIGITS.split(instance_id)
    return tuple((0, int(p), "") if p.isdecimal() else (1, 0, p) for p in parts if p)
