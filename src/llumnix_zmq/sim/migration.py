"""Live migration in virtual time: the staged pre-copy protocol of worker/migration, driven by
events, with a cost model instead of sockets.

Stages (as in the real protocol; every stage is one PRE_ALLOC → ACK round trip)::

    stage k < last:  copy the blocks filled since stage k-1 (blocks [copied, full))   request
                     while the request keeps decoding on the source                     decodes
    last stage:      when <= last_stage_max_blocks blocks remain uncopied, no new block
                     is full, or max_stages - 1 pre-copy stages ran (max_stages counts  downtime
                     the last one, as worker/migration's rounds): suspend, copy the rest
                     (including the block being filled), COMMIT; the destination resumes
    commit:          destination import_request(state, all ids); source remove_request

Cost of copying n blocks = n · block_size · kv_bytes_per_token / bandwidth. A pre-copy stage
lasts copy + handshake; the downtime is the last stage's copy + handshake (the last PRE_ALLOC/ACK
and COMMIT). The copy does not slow the source's decode steps (the paper measures < 1%).

Blocks really move: each stage reserves destination blocks (``reserve_blocks``), exports the
source's contents and imports them; on any failure the reservation is released and the request
stays (or resumes) on the source, so it runs exactly once.

| check at each stage start                   | outcome                                     |
|---------------------------------------------|---------------------------------------------|
| request finished / preempted (no KV)        | abort "request-gone"                        |
| request recomputed behind the copied prefix | abort "preempted"                           |
| destination stopped                         | abort "destination-gone"                    |
| destination has too few free blocks         | abort "no-space" (last stage: resume first) |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..engine.base import EngineError

if TYPE_CHECKING:  # pragma: no cover
    from .cluster import Simulation
    from .instance import SimInstance


@dataclass(frozen=True)
class MigrationCost:
    """What a migration costs in virtual time. Defaults: 64 Gb/s between instances (the paper's
    testbed network class), 1 ms per PRE_ALLOC/ACK or COMMIT round trip."""

    kv_bytes_per_token: int
    block_size: int = 16
    bandwidth_bytes_per_s: float = 8e9
    handshake_s: float = 0.001
    last_stage_max_blocks: int = 16
    max_stages: int = 3

    def __post_init__(self) -> None:
        if self.bandwidth_bytes_per_s <= 0 or self.handshake_s < 0 or self.max_stages < 1:
            raise ValueError("need bandwidth > 0, handshake >= 0 and max_stages >= 1")

    def copy_s(self, num_blocks: int) -> float:
        return num_blocks * self.block_size * self.kv_bytes_per_token / self.bandwidth_bytes_per_s

    def stage_s(self, num_blocks: int) -> float:
        """A pre-copy stage (or the last stage: its duration is the downtime)."""
        return self.copy_s(num_blocks) + self.handshake_s


class StagedMigration:
    """One request moving from ``src`` to ``dst``. ``sim`` supplies the event queue and hears
    the outcome through ``on_migration_done(mig, ok, reason)``."""

    __slots__ = ("sim", "id", "src", "dst", "request_id", "reason", "cost", "stage", "copied",
                 "dst_ids", "started_at", "downtime_s", "outcome", "blocks_copied")

    def __init__(self, sim: Simulation, mig_id: int, src: SimInstance, dst: SimInstance,
                 request_id: str, reason: str, cost: MigrationCost):
        self.sim, self.id, self.src, self.dst = sim, mig_id, src, dst
        self.request_id, self.reason, self.cost = request_id, reason, cost
        self.stage = 0  # pre-copy stages done
        self.copied = 0  # blocks [0, copied) of the request are on the destination
        self.dst_ids: list[int] = []
        self.started_at = sim.queue.now
        self.downtime_s = 0.0
        self.outcome = ""
        self.blocks_copied = 0

    def start(self) -> None:
        self.src.version += 1
        self.dst.version += 1
        self.src.migrating_out += 1
        self.dst.migrating_in += 1
        self.src.migrating_ids.add(self.request_id)
        self._stage(None)

    # --- stages -------------------------------------------------------------------------
    def _stage(self, _arg) -> None:
        src = self.src.engine
        rid = self.request_id
        try:
            full = src.num_full_blocks(rid)
            total = len(src.request_block_ids(rid))
        except EngineError:
            return self._abort("request-gone")
        if full < self.copied:
            return self._abort("preempted")
        if not self.dst.alive:
            return self._abort("destination-gone")
        cost = self.cost
        if (total - self.copied <= cost.last_stage_max_blocks or full <= self.copied
                or self.stage >= cost.max_stages - 1):
            return self._last_stage(total)
        n = full - self.copied
        if not self._copy(self.copied, full):
            return self._abort("no-space")
        self.stage += 1
        self.sim.queue.after(self.cost.stage_s(n), self._stage)

    def _copy(self, start: int, end: int) -> bool:
        """Reserve destination blocks and copy blocks [start, end) into them."""
        self.dst.version += 1
        ids = self.dst.engine.reserve_blocks(end - start)
        if ids is None:
            return False
        if ids:
            frames = self.src.engine.export_blocks(self.request_id, start, end)
            self.dst.engine.import_blocks(ids, frames)
        self.dst_ids += ids
        self.copied = end
        self.blocks_copied += end - start
        return True

    def _last_stage(self, total: int) -> None:
        src = self.src.engine
        self.src.version += 1
        try:
            src.suspend(self.request_id)
        except EngineError:
            return self._abort("request-gone")
        n = total - self.copied
        if not self._copy(self.copied, total):
            src.resume(self.request_id)
            return self._abort("no-space")
        state = src.export_state(self.request_id)
        self.downtime_s = self.cost.stage_s(n)
        self.sim.queue.after(self.downtime_s, self._commit, state)

    def _commit(self, state) -> None:
        self.dst.engine.import_request(state, self.dst_ids)
        self.src.engine.remove_request(self.request_id)
        self._finish(True, "committed")

    def _abort(self, why: str) -> None:
        if self.dst_ids:
            self.dst.engine.release_blocks(self.dst_ids)
            self.dst_ids = []
        self._finish(False, why)

    def _finish(self, ok: bool, why: str) -> None:
        self.outcome = why
        self.src.version += 1
        self.dst.version += 1
        self.src.migrating_out -= 1
        self.dst.migrating_in -= 1
        self.src.migrating_ids.discard(self.request_id)
        self.sim.on_migration_done(self, ok)
