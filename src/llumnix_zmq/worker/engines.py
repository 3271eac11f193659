"""Build the engine a worker config asks for (heavy backends imported lazily)."""

from __future__ import annotations

from ..clock import Clock
from ..config import WorkerConfig
from ..engine.base import Engine


def _set(cfg: WorkerConfig) -> dict:
    """Limits given on the command line (0 = leave the engine's default)."""
    names = ("max_batch_size", "max_num_batched_tokens", "max_model_len")
    return {n: getattr(cfg, n) for n in names if getattr(cfg, n)}


def make_engine(cfg: WorkerConfig, clock: Clock) -> Engine:
    if cfg.engine == "sim":
        from ..engine.sim import SimConfig, SimEngine

        return SimEngine(SimConfig(profile=cfg.profile, block_size=cfg.block_size,
                                   num_blocks=cfg.num_blocks or None,
                                   chunked_prefill=cfg.chunked_prefill,
                                   priority_preemption=cfg.priority_preemption, **_set(cfg)),
                         clock)
    if cfg.engine == "torch":
        from ..engine.torch import make_torch_engine

        options = dict(dtype=cfg.dtype, device=cfg.device, block_size=cfg.block_size,
                       enable_chunked_prefill=cfg.chunked_prefill, seed=cfg.seed,
                       priority_preemption=cfg.priority_preemption, **_set(cfg))
        if cfg.num_blocks:
            options["num_blocks"] = cfg.num_blocks
        if cfg.num_threads:
            options["num_threads"] = cfg.num_threads
        return make_torch_engine(cfg.model, clock=clock, **options)
    if cfg.engine == "vllm":
        from ..engine.vllm import make_vllm_engine

        # vLLM's CPU attention needs a block size that is a multiple of 32
        block_size = cfg.block_size if cfg.block_size % 32 == 0 else 32
        options = dict(dtype=cfg.dtype, device=cfg.device, block_size=block_size,
                       chunked_prefill=cfg.chunked_prefill, seed=cfg.seed, model_name=cfg.model,
                       **_set(cfg))
        if cfg.num_blocks:
            options["num_blocks"] = cfg.num_blocks
        if cfg.cpu_bind:
            options["omp_threads_bind"] = cfg.cpu_bind
        if cfg.kv_cache_gib:
            options["kv_cache_space_gib"] = cfg.kv_cache_gib
        if cfg.gpu_memory_utilization:
            options["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        return make_vllm_engine(cfg.model, clock=clock, **options)
    raise SystemExit(f"unknown engine {cfg.engine!r} (sim | torch | vllm)")
