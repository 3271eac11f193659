"""Source side: which running requests to migrate (the llumlet calls this on a MigrateCommand).

| policy            | order                                                             |
|-------------------|-------------------------------------------------------------------|
| shortest-running  | ran for the least time first (largest running_since) — default    |
| longest-running   | ran for the longest time first (smallest running_since); alias    |
|                   | "longest"                                                         |
| fewest-blocks     | fewest KV blocks first (cheapest copy), then shortest-running     |
| lowest-priority   | NORMAL before HIGH, then shortest-running                         |

Every order ends with request_id, so equal keys still give one answer. A pair whose reason is
"priority" puts NORMAL requests first whatever the policy (moving the NORMAL neighbours off is
what frees room for the HIGH ones). Duplicate request ids in ``candidates`` count once.
``max_blocks`` (the pair's room on the destination) leaves out requests holding more blocks.

Shortest-running is the default because a request that just started has the fewest blocks to
copy, and because it matches the Llumnix artifact's LCR ("last come running") choice.
"""

from __future__ import annotations

from typing import Callable, Iterable

from ...engine.base import MigrationCandidate
from ...protocol.messages import Priority

_Key = Callable[[MigrationCandidate], tuple]

SELECTION_POLICIES: dict[str, _Key] = {
    "shortest-running": lambda c: (-c.running_since, c.request_id),
    "longest-running": lambda c: (c.running_since, c.request_id),
    "longest": lambda c: (c.running_since, c.request_id),
    "fewest-blocks": lambda c: (c.num_blocks, -c.running_since, c.request_id),
    "lowest-priority": lambda c: (int(c.priority), -c.running_since, c.request_id),
}
DEFAULT_SELECTION = "shortest-running"


def select_requests(
    candidates: Iterable[MigrationCandidate],
    n: int,
    policy: str = DEFAULT_SELECTION,
    *,
    reason: str = "",
    max_blocks: int | None = None,
) -> list[MigrationCandidate]:
    """Up to ``n`` distinct candidates in the policy's order, none over ``max_blocks``."""
    try:
        key = SELECTION_POLICIES[policy]
    except KeyError:
        raise ValueError(f"unknown selection policy {policy!r}") from None
    if n <= 0:
        return []
    unique: dict[str, MigrationCandidate] = {}
    for c in candidates:
        if max_blocks is None or c.num_blocks <= max_blocks:
            unique.setdefault(c.request_id, c)
    if reason == "priority":
        ordered = sorted(unique.values(), key=lambda c: (c.priority != Priority.NORMAL, key(c)))
    else:
        ordered = sorted(unique.values(), key=key)
    return ordered[:n]
