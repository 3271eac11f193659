"""The ``torch`` engine backend: a paged-KV Llama engine on CPU or CUDA.

    from llumnix_zmq.engine.torch import make_torch_engine
    engine = make_torch_engine("smollm2", num_blocks=512, max_num_batched_tokens=256)

Importing the package itself is light (``tokenizer`` must stay torch-free for the frontend);
``TorchEngine`` and ``make_torch_engine`` import torch on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import EngineConfig, ModelConfig

if TYPE_CHECKING:
    from .engine import TorchEngine


def make_torch_engine(model: str, clock=None, **options) -> "TorchEngine":
    """A ``TorchEngine`` for a model spec ("tiny", "smollm2", a .gguf file or an HF dir);
    ``options`` are ``EngineConfig`` fields (dtype, device, block_size, num_blocks, ...)."""
    from .engine import TorchEngine

    return TorchEngine(EngineConfig(model=model, **options), clock=clock)


def __getattr__(name: str):
    if name == "TorchEngine":
        from .engine import TorchEngine

        return TorchEngine
    raise AttributeError(name)


__all__ = ["EngineConfig", "ModelConfig", "TorchEngine", "make_torch_engine"]
