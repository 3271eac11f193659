"""Where a new request goes. One pure function over the instance table.

Eligible instances: state ACTIVE, not ``load.draining``, report no older than
``cfg.report_staleness_s``, not in ``exclude``. None eligible → ``NoInstance``.

| policy        | choice (d = the new request's prompt blocks)                         | ties      |
|---------------|----------------------------------------------------------------------|-----------|
| llumnix       | NORMAL: max dispatch freeness (below), long prompts: fewest stalled; | rng       |
|               | HIGH: max free virtual blocks                                        |           |
| llumnix-base  | llumnix with priorities off: HIGH treated as NORMAL, headroom 0      | rng       |
| infaas++      | min physical usage (used + all waiting demand + d) / M               | lowest id |
| round-robin   | next id after the last chosen one, in sorted id order, wrapping      | -         |
| least-queue   | fewest waiting, then fewest running                                  | lowest id |

Dispatch freeness (NORMAL under llumnix): the freeness the instance would have once its whole
queue and the new request were admitted::

    F_d = (M − ΣV − W_rest − d) / (B + N_waiting + 1)

ΣV is the virtual usage (running blocks, head-of-line demand, headroom of running HIGH requests)
and W_rest the demand of the waiting requests behind the head, which the new one queues behind.

Long prompts (NORMAL, at least ``cfg.long_prompt_tokens``; 0 disables). Without chunked
prefill a prompt is prefilled whole in one step, and every request decoding on its instance
waits for that step: a 4,000-token prompt on an A10 stalls them ~0.9 s, which a request with a
short output spreads over few tokens (its per-token decode latency, the P99 of the run, is
mostly these stalls). So a long prompt goes to the instance where the fewest requests would
wait, among those that keep ``F_d >= cfg.long_prompt_min_freeness`` (room to grow, so memory
balance is kept); ties and the case where none qualifies fall back to the largest F_d::

    key = (F_d >= τ, −(B + N_waiting) if F_d >= τ else 0, F_d)

Free virtual blocks (HIGH under llumnix), the room left after every reservation::

    H = M − ΣV − W_rest

HIGH requests go to the largest H (absolute room, so the request keeps space to grow), then the
smaller batch (faster decode steps), then rng. With ``headroom_blocks == 0`` priorities are off
and HIGH is dispatched like NORMAL, as under llumnix-base. ``rng`` is consulted only on a tie.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from ...protocol.messages import InstanceInfo, InstanceState, Priority
from .freeness import (
    DISPATCH_POLICIES,
    LoadSummary,
    PolicyConfig,
    blocks_for_tokens,
    id_order_key,
    summarize,
    usage_blocks,
)

_DEFAULT_CFG = PolicyConfig()


class NoInstance(Exception):
    """No ACTIVE instance with a fresh report (after ``exclude``) can take the request."""


@dataclass
class RoundRobinState:
    """The round-robin cursor: the id chosen last. Keyed by id (not index) so instances joining
    or leaving do not make the cursor skip or repeat others."""

    last_id: str | None = None


def eligible(
    instances: Iterable[InstanceInfo], cfg: PolicyConfig, exclude: Sequence[str] = ()
) -> list[InstanceInfo]:
    active, stale = InstanceState.ACTIVE, cfg.report_staleness_s  # is_fresh, inlined (hot)
    return [
        i
        for i in instances
        if i.state == active
        and not i.load.draining
        and i.report_age_s <= stale
        and i.instance_id not in exclude
    ]


def dispatch(
    policy: str,
    instances: Iterable[InstanceInfo],
    num_prompt_tokens: int,
    priority: Priority,
    rng: random.Random,
    rr_state: RoundRobinState | None = None,
    *,
    cfg: PolicyConfig = _DEFAULT_CFG,
    exclude: Sequence[str] = (),
) -> tuple[str, str]:
    """Return ``(instance_id, reason)``; raise ``NoInstance`` when nothing is eligible."""
    if policy not in DISPATCH_POLICIES:
        raise ValueError(f"unknown dispatch policy {policy!r}")
    cands = eligible(instances, cfg, exclude)
    if not cands:
        raise NoInstance(f"no eligible instance ({policy})")
    if policy == "round-robin":
        return _round_robin(cands, rr_state if rr_state is not None else RoundRobinState())
    if policy == "least-queue":
        best = min(
            cands,
            key=lambda i: (i.load.num_waiting, i.load.num_running, id_order_key(i.instance_id)),
        )
        return best.instance_id, "least-queue"
    if policy == "infaas++":
        best = min(
            cands,
            key=lambda i: (_physical_usage(i, num_prompt_tokens), id_order_key(i.instance_id)),
        )
        return best.instance_id, "infaas++:lowest-usage"
    headroom = 0 if policy == "llumnix-base" else cfg.effective_headroom
    if priority == Priority.HIGH and headroom > 0:
        return _argmax(cands, lambda i: _free_virtual(i, headroom), rng), f"{policy}:headroom"
    if 0 < cfg.long_prompt_tokens <= num_prompt_tokens:
        key = _long_prompt_key(headroom, num_prompt_tokens, cfg.long_prompt_min_freeness)
        return _argmax(cands, key, rng), f"{policy}:long-prompt"
    return _argmax(cands, _dispatch_freeness_key(headroom, num_prompt_tokens), rng), \
        f"{policy}:freest"


def dispatch_freeness(info: InstanceInfo, headroom_blocks: int, num_prompt_tokens: int) -> float:
    """F_d of the module docstring."""
    load = info.load
    return _f_d(summarize(load), headroom_blocks,
                blocks_for_tokens(num_prompt_tokens, load.block_size))


def _f_d(s: LoadSummary, headroom_blocks: int, d: int) -> float:
    """F_d from a summary: (M − ΣV − W_rest − d) / (B + N_waiting + 1)."""
    free = s.free_after_queue - headroom_blocks * s.num_high_running - d
    return free / (s.num_running + s.num_waiting + 1)


def _dispatch_freeness_key(headroom_blocks: int, num_prompt_tokens: int):
    """``(dispatch_freeness(i, ...),)`` as a key function, with d computed once per block size
    (the hot path: every NORMAL request scores every eligible instance)."""
    d_of: dict[int, int] = {}

    def key(info: InstanceInfo) -> tuple[float]:
        load = info.load
        s = summarize(load)
        d = d_of.get(load.block_size)
        if d is None:
            d = d_of[load.block_size] = blocks_for_tokens(num_prompt_tokens, load.block_size)
        return (_f_d(s, headroom_blocks, d),)

    return key


def _long_prompt_key(headroom_blocks: int, num_prompt_tokens: int, min_freeness: float):
    """The long-prompt key of the module docstring: (qualifies, −requests that would wait, F_d)."""
    freeness_key = _dispatch_freeness_key(headroom_blocks, num_prompt_tokens)

    def key(info: InstanceInfo) -> tuple[int, int, float]:
        (f,) = freeness_key(info)
        if f >= min_freeness:
            s = summarize(info.load)  # memoized: the same summary freeness_key used
            return (1, -(s.num_running + s.num_waiting), f)
        return (0, 0, f)

    return key


def free_virtual_blocks(info: InstanceInfo, headroom_blocks: int) -> int:
    """H of the module docstring."""
    return _free_virtual(info, headroom_blocks)[0]


def _free_virtual(info: InstanceInfo, headroom_blocks: int) -> tuple[int, int]:
    """(H, −batch): the HIGH-priority sort key."""
    s = summarize(info.load)
    h = info.load.num_blocks_total - usage_blocks(s, headroom_blocks) - s.rest_demand
    return (h, -(s.num_running + s.num_waiting))


def _physical_usage(info: InstanceInfo, num_prompt_tokens: int) -> float:
    load = info.load
    s = summarize(load)
    d = blocks_for_tokens(num_prompt_tokens, load.block_size)
    used = load.num_blocks_used + s.head_demand + s.rest_demand + d
    return used / max(load.num_blocks_total, 1)


def _argmax(
    cands: list[InstanceInfo], key: Callable[[InstanceInfo], tuple], rng: random.Random
) -> str:
    """Id with the largest key; exact ties broken by ``rng`` over the ids in sorted order (rng
    is consulted only when there is a tie, so its stream is deterministic per input)."""
    keyed = [(key(i), i.instance_id) for i in cands]
    best = max(k for k, _ in keyed)
    tied = sorted((iid for k, iid in keyed if k == best), key=id_order_key)
    return tied[0] if len(tied) == 1 else rng.choice(tied)


def _round_robin(cands: list[InstanceInfo], state: RoundRobinState) -> tuple[str, str]:
    ids = sorted((i.instance_id for i in cands), key=id_order_key)
    chosen = ids[0]
    if state.last_id is not None:
        last = id_order_key(state.last_id)
        chosen = next((iid for iid in ids if id_order_key(iid) > last), ids[0])
    state.last_id = chosen
    return chosen, "round-robin"
