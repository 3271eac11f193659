"""Migration pairing (Llumnix §4.4.2), run every ``cfg.pairing_period_s``.

Who takes part (everything else is left out of this round):

| instance                                           | role                              |
|----------------------------------------------------|-----------------------------------|
| DEAD, or report older than report_staleness_s      | out (its numbers cannot be trusted)|
| num_migrating_out > 0 or num_migrating_in > 0      | out (its report does not yet show  |
|                                                    | the move in flight; one at a time)|
| draining (state DRAINING or load.draining)         | source, reason "drain", F = −inf  |
| F < migrate_out_threshold                          | source                            |
| F > migrate_in_threshold, state ACTIVE              | destination                       |
| a source with no running request                   | out (nothing to migrate)          |

Sources sorted by ascending F (most loaded first), destinations by descending F (least loaded
first), ties by id. Each source in turn takes the first unused destination with *room* for the
smallest request it could send: room = M − ΣV of the destination (its virtual free blocks),
less ``cfg.migrate_room_margin_blocks`` (the request grows while it moves); a source whose
smallest running request fits no destination is left out of this round. When every request fits,
this is the i-th source with the i-th destination. The pair carries ``max_blocks`` = that room,
and the source's selection skips requests larger than it (a destination too small for the
request would only abort the migration for lack of space). Since a source has
F < out ≤ in < F of a destination, no instance appears in two pairs.

Reason of a pair (first that applies) and how many requests the source should move:

| reason        | when                                                        | num_requests |
|---------------|-------------------------------------------------------------|--------------|
| drain         | the source is draining                                      | all running  |
| priority      | it runs HIGH and NORMAL requests (priority-aware configs)   | 1            |
| defrag        | its head-of-line waiting demand exceeds its free blocks     | 1            |
| load-balance  | otherwise                                                   | 1            |

Under the baseline policies (``cfg.migration_enabled`` false) no pairs are made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from ...protocol.messages import InstanceInfo, InstanceState
from .freeness import (
    LoadSummary,
    PolicyConfig,
    id_order_key,
    is_draining,
    is_fresh,
    summarize,
    usage_blocks,
)


@dataclass(frozen=True)
class MigrationPair:
    source_id: str
    destination_id: str
    reason: str  # "load-balance" | "defrag" | "priority" | "drain"
    num_requests: int = 1
    source_freeness: float = 0.0
    destination_freeness: float = 0.0
    # the largest request (KV blocks) the destination has room for; None: no limit
    max_blocks: int | None = None


def pair_migrations(
    instances: Iterable[InstanceInfo], cfg: PolicyConfig, now: float
) -> list[MigrationPair]:
    """Pairs for this round. ``now`` is the caller's clock reading; ages already arrive
    relative to it in ``report_age_s``, so the decision itself does not depend on it."""
    del now  # pure in the reports; kept for a uniform policy signature
    if not cfg.migration_enabled:
        return []
    sources: list[tuple[float, tuple, InstanceInfo, LoadSummary]] = []
    dests: list[tuple[float, tuple, str, int]] = []
    for info in instances:
        if info.state == InstanceState.DEAD or not is_fresh(info, cfg):
            continue
        load = info.load
        if load.num_migrating_out > 0 or load.num_migrating_in > 0:
            continue
        s = summarize(load)
        key = id_order_key(info.instance_id)
        if is_draining(info):
            if s.num_running > 0:
                sources.append((-math.inf, key, info, s))
            continue
        room = load.num_blocks_total - usage_blocks(s, cfg.effective_headroom)
        f = room / max(s.num_running, 1)
        if f < cfg.migrate_out_threshold:
            if s.num_running > 0:
                sources.append((f, key, info, s))
        elif f > cfg.migrate_in_threshold and info.state == InstanceState.ACTIVE:
            dests.append((-f, key, info.instance_id, room - cfg.migrate_room_margin_blocks))
    sources.sort(key=lambda t: (t[0], t[1]))
    dests.sort(key=lambda t: (t[0], t[1]))
    pairs = []
    for f_src, _, info, s in sources:
        need = _smallest_running(info)
        for j, (neg_f_dst, _, dst_id, room) in enumerate(dests):
            if room >= need:
                del dests[j]
                reason, n = _reason(info, s, cfg)
                pairs.append(MigrationPair(info.instance_id, dst_id, reason, n, f_src, -neg_f_dst,
                                           room))
                break
    return pairs


def _smallest_running(info: InstanceInfo) -> int:
    """KV blocks of the smallest running request not already migrating (the least a source can
    send); 0 when the report has no per-request detail."""
    sizes = [r.num_blocks for r in info.load.requests if r.running and not r.migrating]
    return min(sizes, default=0)


def _reason(info: InstanceInfo, s: LoadSummary, cfg: PolicyConfig) -> tuple[str, int]:
    if is_draining(info):
        return "drain", s.num_running
    if cfg.priority_aware and s.num_high_running > 0 and s.num_normal_running > 0:
        return "priority", 1
    free_blocks = info.load.num_blocks_total - info.load.num_blocks_used
    if s.head_demand > free_blocks:
        return "defrag", 1
    return "load-balance", 1
