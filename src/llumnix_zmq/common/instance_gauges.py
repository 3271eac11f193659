"""Per-instance load gauges (blocks used, queue, running), shared by scheduler and frontend
metrics; series of instances that left are removed."""

from __future__ import annotations

from prometheus_client import Gauge


class InstanceGauges:
    def __init__(self, prefix: str, registry) -> None:
        self.blocks_used = Gauge(f"{prefix}_instance_blocks_used", "KV blocks used (last report)",
                                 ["instance"], registry=registry)
        self.waiting = Gauge(f"{prefix}_instance_waiting", "queued requests", ["instance"],
                             registry=registry)
        self.running = Gauge(f"{prefix}_instance_running", "running requests", ["instance"],
                             registry=registry)
        self._known: set[str] = set()

    def observe(self, infos) -> set[str]:
        seen = set()
        for info in infos:
            seen.add(info.instance_id)
            self.blocks_used.labels(info.instance_id).set(info.load.num_blocks_used)
            self.waiting.labels(info.instance_id).set(info.load.num_waiting)
            self.running.labels(info.instance_id).set(info.load.num_running)
        for gone in self._known - seen:
            for g in (self.blocks_used, self.waiting, self.running):
                g.remove(gone)
        self._known = seen
        return seen
