"""Everything a simulation run is made of: cluster, engine, scheduler, migration, workload.

Thresholds left as None take the policy defaults (``PolicyConfig``); the simulator never edits
those defaults, it passes explicit values when a flag sets them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ..engine.sim import SimConfig, get_profile
from ..scheduler.policy.freeness import PolicyConfig
from .migration import MigrationCost

POLICIES = ("llumnix", "llumnix-base", "infaas++", "round-robin", "least-queue")


@dataclass
class SimulationConfig:
    # cluster and engine
    instances: int = 16
    profile: str = "llama-7b-a10"
    block_size: int = 16
    num_blocks: int | None = None  # None: the profile's capacity
    max_batch_size: int = 256
    max_num_batched_tokens: int = 4096
    max_model_len: int = 8192
    chunked_prefill: bool = True
    # workload (see llumnix_zmq.workload.build_workload)
    trace: str = "zipf:128-128"
    trace_format: str | None = None
    arrival: str = "poisson"
    rate: float | None = None
    cv: float = 1.0
    time_scale: float = 1.0
    requests: int = 10000
    priority_fraction: float = 0.0
    max_output: int | None = None
    seed: int = 1
    # scheduling
    policy: str = "llumnix"
    migration: bool = True  # under the llumnix policies (baselines never migrate)
    selection: str = "shortest-running"
    migrate_out_threshold: float | None = None
    migrate_in_threshold: float | None = None
    headroom_blocks: int | None = None
    long_prompt_tokens: int | None = None  # None: PolicyConfig's (dispatch.py); 0: off
    long_prompt_min_freeness: float | None = None
    report_period_s: float = 0.05
    report_on_change: bool = True  # like the worker: report at once on arrival/finish/migration
    pairing_period_s: float = 0.1
    max_migrations_per_pair: int = 1
    max_concurrent_migrations: int = 4  # per source, as the worker
    engine_priorities: bool | None = None  # None: only when the policy is priority-aware
    priority_preemption: bool = True  # engines: a HIGH request that does not fit preempts NORMAL
    # migration cost
    bandwidth_gbps: float = 64.0
    handshake_ms: float = 1.0
    last_stage_max_blocks: int = 16
    max_stages: int = 3
    # auto-scaling (autoscale_max = 0: off)
    autoscale_min: int = 0
    autoscale_max: int = 0
    scale_out_threshold: float | None = None
    scale_in_threshold: float | None = None
    scale_cooldown_s: float = 10.0
    startup_delay_s: float = 10.0
    # time from a request's arrival to its dispatch to a worker (HTTP, tokenization, the scheduler
    # query): 0 models an ideal frontend; bench/paper/fidelity.py measures the real mesh's
    frontend_latency_ms: float = 0.0
    # added to every engine step that does work: the worker loop's own cost per step (0: ideal)
    step_overhead_ms: float = 0.0
    # run
    max_sim_seconds: float | None = None  # stop the clock here (speed benchmarks); None: run out
    dispatch_retry_s: float = 0.01  # NoInstance: the frontend retries after this
    progress: bool | None = None  # None: on for >= 2000 requests when stderr is a terminal
    extra: dict = field(default_factory=dict)  # free-form labels copied into the JSON

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; expected one of {POLICIES}")
        if self.instances < 1 and not self.autoscale_max:
            raise ValueError("need at least one instance")
        if self.autoscale_max and not 1 <= self.autoscale_min <= self.autoscale_max:
            raise ValueError("autoscale needs 1 <= MIN <= MAX")
        get_profile(self.profile)

    @property
    def autoscale(self) -> bool:
        return self.autoscale_max > 0

    def initial_instances(self) -> int:
        if self.autoscale:
            return min(max(self.instances, self.autoscale_min), self.autoscale_max)
        return self.instances

    def engine_config(self) -> SimConfig:
        return SimConfig(profile=self.profile, block_size=self.block_size,
                         num_blocks=self.num_blocks,
                         max_batch_size=self.max_batch_size,
                         max_num_batched_tokens=self.max_num_batched_tokens,
                         chunked_prefill=self.chunked_prefill, max_model_len=self.max_model_len,
                         priority_preemption=self.priority_preemption)

    def policy_config(self) -> PolicyConfig:
        """The PolicyConfig the scheduler service would build from the same flags."""
        kw = {}
        for name in ("migrate_out_threshold", "migrate_in_threshold", "headroom_blocks",
                     "long_prompt_tokens", "long_prompt_min_freeness",
                     "scale_out_threshold", "scale_in_threshold"):
            if getattr(self, name) is not None:
                kw[name] = getattr(self, name)
        if self.autoscale:
            kw.update(min_instances=self.autoscale_min, max_instances=self.autoscale_max)
        return PolicyConfig(
            dispatch_policy=self.policy,
            enable_migration=None if self.migration else False,
            pairing_period_s=self.pairing_period_s,
            report_staleness_s=max(1.0, 5 * self.report_period_s),
            scale_cooldown_s=self.scale_cooldown_s,
            seed=self.seed,
            **kw,
        )

    def migration_cost(self) -> MigrationCost:
        prof = get_profile(self.profile)
        return MigrationCost(kv_bytes_per_token=prof.kv_bytes_per_token, block_size=self.block_size,
                             bandwidth_bytes_per_s=self.bandwidth_gbps * 1e9 / 8,
                             handshake_s=self.handshake_ms / 1000.0,
                             last_stage_max_blocks=self.last_stage_max_blocks,
                             max_stages=self.max_stages)

    def uses_engine_priorities(self) -> bool:
        if self.engine_priorities is not None:
            return self.engine_priorities
        return self.policy_config().priority_aware and self.policy == "llumnix"

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in d.items()}
