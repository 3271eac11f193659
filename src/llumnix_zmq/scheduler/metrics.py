"""Prometheus metrics of the scheduler (its own registry: no process-wide globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from ..common.instance_gauges import InstanceGauges


class SchedulerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.registrations = Counter("llumnix_scheduler_registrations", "worker registrations",
                                     registry=r)
        self.instance_deaths = Counter("llumnix_scheduler_instance_deaths",
                                       "instances dropped after missed heartbeats", registry=r)
        self.dispatch = Counter("llumnix_scheduler_dispatch", "dispatch decisions",
                                ["policy", "reason"], registry=r)
        self.dispatch_failures = Counter("llumnix_scheduler_dispatch_failures",
                                         "dispatch queries with no instance", registry=r)
        self.migration_pairs = Counter("llumnix_scheduler_migration_pairs",
                                       "migration pairs ordered", ["reason"], registry=r)
        self.migration_orders = Counter("llumnix_scheduler_migration_orders",
                                        "migration orders answered", ["outcome"], registry=r)
        self.scale = Counter("llumnix_scheduler_scale_decisions", "auto-scaling actions",
                             ["action", "reason"], registry=r)
        self.instances = Gauge("llumnix_scheduler_instances", "instances by state", ["state"],
                               registry=r)
        self.per_instance = InstanceGauges("llumnix", r)

    def observe_instances(self, infos) -> None:
        counts: dict[str, int] = {}
        for info in infos:
            counts[info.state.name] = counts.get(info.state.name, 0) + 1
        for state in ("ACTIVE", "DRAINING"):
            self.instances.labels(state).set(counts.get(state, 0))
        self.per_instance.observe(infos)

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
