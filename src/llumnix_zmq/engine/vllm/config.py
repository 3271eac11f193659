"""Settings of the vllm engine backend and how they map onto vLLM's ``EngineArgs``.

Imports nothing heavy: the environment variables vLLM reads at import time are set by
``apply_env`` *before* vLLM is first imported (``VllmEngine.__init__`` calls it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

CONNECTOR_NAME = "LlumnixMigrationConnector"
CONNECTOR_MODULE = "llumnix_zmq.engine.vllm.connector"


@dataclass
class VllmEngineConfig:
    model: str = "tiny"  # an HF directory, or "tiny" (built on first use, see tiny.py)
    dtype: str = "float32"
    block_size: int = 32  # vLLM CPU: a multiple of 32
    num_blocks: Optional[int] = None  # None: what VLLM_CPU_KVCACHE_SPACE holds
    max_model_len: int = 4096
    max_batch_size: int = 64  # vLLM max_num_seqs
    max_num_batched_tokens: int = 2048
    chunked_prefill: bool = True
    enable_prefix_caching: bool = False  # see engine.py: imports assume no local hits
    seed: int = 0
    kv_cache_space_gib: float = 1.0  # VLLM_CPU_KVCACHE_SPACE
    omp_threads_bind: str = ""  # VLLM_CPU_OMP_THREADS_BIND ("0", "1", "0-3", "auto")
    enforce_eager: bool = True
    device: str = "cpu"  # "cuda" with the vllm GPU wheel (the platform is vLLM's own choice)
    gpu_memory_utilization: float = 0.9  # GPU: share of its memory vLLM may take (2 per GPU: 0.4)
    model_name: str = ""  # reported name; default: the model spec


def apply_env(cfg: VllmEngineConfig) -> None:
    """Environment vLLM reads once at import/start-up. In-process engine core, always: the
    ``Engine`` hooks need the scheduler and the KV tensors in this process."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if cfg.device == "cpu":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{cfg.kv_cache_space_gib:g}")
        if cfg.omp_threads_bind:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cfg.omp_threads_bind


def engine_args(cfg: VllmEngineConfig, model_path: str, engine_id: str):
    from vllm.config import KVTransferConfig
    from vllm.engine.arg_utils import EngineArgs

    num_gpu_blocks = None if cfg.num_blocks is None else cfg.num_blocks + 1  # + vLLM's null block
    return EngineArgs(
        model=model_path,
        dtype=cfg.dtype,
        block_size=cfg.block_size,
        max_model_len=cfg.max_model_len,
        max_num_seqs=cfg.max_batch_size,
        max_num_batched_tokens=max(cfg.max_num_batched_tokens, cfg.max_model_len)
        if not cfg.chunked_prefill else cfg.max_num_batched_tokens,
        enable_chunked_prefill=cfg.chunked_prefill,
        enable_prefix_caching=cfg.enable_prefix_caching,
        num_gpu_blocks_override=num_gpu_blocks,
        enforce_eager=cfg.enforce_eager,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        seed=cfg.seed,
        scheduling_policy="priority",
        async_scheduling=False,
        disable_log_stats=True,
        disable_hybrid_kv_cache_manager=True,
        kv_transfer_config=KVTransferConfig(
            kv_connector=CONNECTOR_NAME, kv_connector_module_path=CONNECTOR_MODULE,
            kv_role="kv_both", engine_id=engine_id),
    )
