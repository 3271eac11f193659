"""Build the engine a worker config asks for (heavy backends imported lazily)."""

from __future__ import annotations

from ..clock import Clock
from ..config import WorkerConfig
from ..engine.base import Engine


def make_engine(cfg: WorkerConfig, clock: Clock) -> Engine:
    if cfg.engine == "sim":
        from ..engine.sim import SimConfig, SimEngine

        return SimEngine(SimConfig(
            profile=cfg.profile,
            block_size=cfg.block_size,
            num_blocks=cfg.num_blocks or None,
            max_batch_size=cfg.max_batch_size,
            max_num_batched_tokens=cfg.max_num_batched_tokens,
            chunked_prefill=cfg.chunked_prefill,
            max_model_len=cfg.max_model_len,
        ), clock)
    if cfg.engine == "torch":
        from ..engine.torch import make_torch_engine

        options = dict(dtype=cfg.dtype, device=cfg.device, block_size=cfg.block_size,
                       max_batch_size=cfg.max_batch_size,
                       max_num_batched_tokens=cfg.max_num_batched_tokens,
                       chunked_prefill=cfg.chunked_prefill, max_model_len=cfg.max_model_len,
                       seed=cfg.seed, clock=clock)
        if cfg.num_blocks:
            options["num_blocks"] = cfg.num_blocks
        return make_torch_engine(cfg.model, **options)
    if cfg.engine == "vllm":
        raise SystemExit("the vllm engine is not available in this build yet")
    raise SystemExit(f"unknown engine {cfg.engine!r} (sim | torch | vllm)")
