"""Prometheus metrics of one frontend process (its own registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..common.instance_gauges import InstanceGauges

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class FrontendMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("llumnix_frontend_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.ttft = Histogram("llumnix_frontend_ttft_seconds", "time to first token",
                              buckets=_LATENCY, registry=r)
        self.itl = Histogram("llumnix_frontend_inter_token_seconds", "inter-token latency",
                             buckets=_LATENCY, registry=r)
        self.e2e = Histogram("llumnix_frontend_e2e_seconds", "end-to-end latency",
                             buckets=_LATENCY, registry=r)
        self.tokens = Counter("llumnix_frontend_streamed_tokens", "tokens received from workers",
                              registry=r)
        self.in_flight = Gauge("llumnix_frontend_in_flight", "requests in flight", registry=r)
        self.fallback_dispatch = Counter("llumnix_frontend_fallback_dispatch",
                                         "dispatches made from the last-known table", registry=r)
        self.dispatch_tickets = Counter("llumnix_frontend_dispatch_tickets",
                                        "NORMAL requests that found a fresh dispatch ticket (hit) "
                                        "or asked the scheduler directly (miss)", ["outcome"],
                                        registry=r)
        self.scheduler_up = Gauge("llumnix_frontend_scheduler_reachable",
                                  "1 when the scheduler answers", registry=r)
        self.instance_failures = Counter("llumnix_frontend_instance_failures",
                                         "requests failed because their instance died", registry=r)
        self.resumes = Counter("llumnix_frontend_resumes",
                               "requests resumed on another instance after theirs died",
                               registry=r)
        self.client_aborts = Counter("llumnix_frontend_client_aborts",
                                     "requests aborted by client disconnect", registry=r)
        self.instances = Gauge("llumnix_frontend_instances", "live instances known", registry=r)
        self.per_instance = InstanceGauges("llumnix_frontend", r)

    def observe_instances(self, infos) -> None:
        self.instances.set(len(self.per_instance.observe(infos)))
