"""The ``torch`` engine backend: a paged-KV Llama engine on CPU or CUDA.

    from llumnix_zmq.engine.torch import make_torch_engine
    engine = make_torch_engine("smollm2", num_blocks=512, max_num_batched_tokens=256)

Importing this package imports torch.
"""

from __future__ import annotations

from .config import EngineConfig, ModelConfig
from .engine import TorchEngine


def make_torch_engine(model: str, clock=None, **options) -> TorchEngine:
    """A ``TorchEngine`` for a model spec ("tiny", "smollm2", a .gguf file or an HF dir);
    ``options`` are ``EngineConfig`` fields (dtype, device, block_size, num_blocks, ...)."""
    return TorchEngine(EngineConfig(model=model, **options), clock=clock)


__all__ = ["EngineConfig", "ModelConfig", "TorchEngine", "make_torch_engine"]
