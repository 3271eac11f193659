"""Service configuration: one dataclass per role, filled from (lowest to highest precedence)
defaults < TOML file (``[scheduler]``, ``[worker]``, ``[frontend]`` tables) < environment
(``LLUMNIX_<FIELD>``, read once at start-up) < command-line flags (``--field-name``).

The environment and argv are read only in ``load_config`` — nothing deeper reads them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class SchedulerConfig:
    bind: str = "tcp://127.0.0.1:5555"
    dispatch_policy: str = "llumnix"  # llumnix | llumnix-base | infaas++ | round-robin | least-queue
    heartbeat_timeout_s: float = 1.0  # an instance silent this long is dropped from dispatch
    report_period_s: float = 0.05  # what workers are told to use
    enable_migration: bool = True
    pairing_period_s: float = 0.1
    migrate_out_threshold: float = -1.0  # None-like sentinel: use the policy default
    migrate_in_threshold: float = -1.0
    headroom_blocks: int = -1
    # a prompt this long goes where the fewest requests wait for its prefill (0: off; policy.py)
    long_prompt_tokens: int = -1
    long_prompt_min_freeness: float = -1.0
    max_migrations_per_pair: int = 1
    autoscale_min: int = 0  # 0: auto-scaling off
    autoscale_max: int = 0
    scale_out_threshold: float = -1.0
    scale_in_threshold: float = -1.0
    scale_cooldown_s: float = 10.0
    launcher: str = "none"  # none | local | compose
    launch_template: str = ""  # local: worker flags for new instances ({id} = instance id)
    compose_file: str = ""  # compose: the docker-compose.yml to scale
    compose_service: str = "worker"
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0  # 0: no metrics endpoint
    seed: int = 0
    log_level: str = "INFO"
    curve_dir: str = ""  # directory of CURVE keys; empty: plaintext


@dataclass
class WorkerConfig:
    scheduler: str = "tcp://127.0.0.1:5555"
    bind: str = "tcp://127.0.0.1:0"
    advertise: str = ""  # address peers and frontends use; default: the bound endpoint
    instance_id: str = ""  # default: worker-<pid>
    engine: str = "sim"  # sim | torch | vllm
    model: str = "sim"  # torch: tiny | smollm2 | PATH
    profile: str = "llama-7b-a10"  # sim latency profile
    time_scale: float = 1.0  # sim: sleep modelled step time x this (0: no sleep)
    block_size: int = 16
    num_blocks: int = 0  # 0: engine default
    max_batch_size: int = 0  # 0: the engine's default (here and below)
    max_num_batched_tokens: int = 0
    max_model_len: int = 0
    chunked_prefill: bool = True
    # sim, torch: a HIGH request that does not fit preempts NORMAL running ones (vllm: vLLM's own)
    priority_preemption: bool = True
    num_threads: int = 0  # torch on CPU: intra-op threads
    cpu_bind: str = ""  # vllm on CPU: OpenMP cores (VLLM_CPU_OMP_THREADS_BIND: "0", "2-3", "auto")
    kv_cache_gib: float = 0.0  # vllm on CPU: KV cache space (VLLM_CPU_KVCACHE_SPACE); 0: 1 GiB
    gpu_memory_utilization: float = 0.0  # vllm on a GPU: its memory share; 0: vLLM's 0.9
    dtype: str = "float32"
    device: str = "cpu"
    report_period_s: float = 0.05
    migration_policy: str = "shortest-running"
    max_concurrent_migrations: int = 4
    last_stage_max_blocks: int = 16
    max_stages: int = 3
    migration_timeout_s: float = 10.0
    migration_data_plane: str = "zmq"  # zmq | nccl (GPU to GPU, both engines on CUDA)
    log_level: str = "INFO"
    curve_dir: str = ""
    curve_name: str = ""  # key name in curve_dir; default: the instance id, else "worker"
    seed: int = 0
    trace_requests: str = ""  # file for per-request stage times (common/reqtrace.py); "": off


@dataclass
class FrontendConfig:
    scheduler: str = "tcp://127.0.0.1:5555"
    host: str = "127.0.0.1"
    port: int = 8000
    bind_tokens: str = "tcp://127.0.0.1:0"  # PULL socket workers push tokens to
    advertise_tokens: str = ""
    engine: str = "sim"  # picks the tokenizer with ``model``
    model: str = "sim"
    served_model_name: str = ""  # name in /v1/models; default: the model
    max_model_len: int = 8192
    max_body_bytes: int = 4 << 20
    max_tokens_limit: int = 8192
    dispatch_policy: str = "llumnix"  # fallback policy when the scheduler is unreachable
    # the fallback's long-prompt rule (as the scheduler's flags; -1: the policy default, 0: off)
    long_prompt_tokens: int = -1
    long_prompt_min_freeness: float = -1.0
    dispatch_timeout_s: float = 0.5
    dispatch_ticket_ttl_s: float = 0.05  # 0: ask the scheduler per request (frontend/tickets.py)
    dispatch_ticket_refill_delay_s: float = 0.002  # the next ticket's fetch, after a take
    instance_refresh_s: float = 0.2
    request_timeout_s: float = 600.0
    expect_instances: int = 1  # /health is 200 once this many instances are live
    max_resumes: int = 3  # re-submissions of a request whose instance died
    max_concurrent_requests: int = 4096  # in flight in this frontend; beyond: 429
    max_requests_per_client: int = 512  # in flight per client address; beyond: 429
    max_queue_per_instance: int = 512  # every instance queueing this many: saturated, 429
    restart_grace_s: float = 3.0  # keep the known table this long after a scheduler restart
    admin_key: str = ""
    api_keys: list = field(default_factory=list)
    log_level: str = "INFO"
    curve_dir: str = ""
    curve_name: str = ""  # key name in curve_dir; default "frontend"
    trace_requests: str = ""  # file for per-request stage times (common/reqtrace.py); "": off


SECTIONS = {"scheduler": SchedulerConfig, "worker": WorkerConfig, "frontend": FrontendConfig}


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    parser.add_argument("--config", help="TOML file with a table per role")
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, dest=f.name, default=None,
                                action=argparse.BooleanOptionalAction)
        elif f.type in ("list", list):
            parser.add_argument(flag, dest=f.name, default=None, action="append")
        else:
            parser.add_argument(flag, dest=f.name, default=None, type=_parse_type(f))


def _parse_type(f: dataclasses.Field):
    return {"int": int, "float": float, "str": str}.get(str(f.type), str)


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    kind = str(f.type)
    if kind == "bool":
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)
    if kind == "list":
        if isinstance(value, str):
            return [v for v in (s.strip() for s in value.split(",")) if v]
        return list(value)
    return _parse_type(f)(value)


def load_config(
    section: str,
    args: argparse.Namespace | None = None,
    env: Mapping[str, str] | None = None,
    toml_text: str | None = None,
):
    cls = SECTIONS[section]
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = getattr(args, "config", None) if args is not None else None
    if toml_text is None and path:
        with open(path, "rb") as fh:
            toml_text = fh.read().decode()
    table = tomllib.loads(toml_text).get(section, {}) if toml_text else {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(table) - set(fields)
    if unknown:
        raise ValueError(f"[{section}] unknown keys: {sorted(unknown)}")
    for name, f in fields.items():
        if name in table:
            values[name] = _coerce(f, table[name])
        env_value = env.get("LLUMNIX_" + name.upper())
        if env_value is not None:
            values[name] = _coerce(f, env_value)
        if args is not None and getattr(args, name, None) is not None:
            values[name] = _coerce(f, getattr(args, name))
    return cls(**values)


def parse_args(section: str, argv: Sequence[str] | None = None):
    parser = argparse.ArgumentParser(prog=f"llumnix-zmq {section}")
    add_flags(parser, SECTIONS[section])
    return load_config(section, parser.parse_args(argv))
