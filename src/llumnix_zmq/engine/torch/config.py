"""Model and engine configuration (plain dataclasses; no torch import)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Optional

from .gguf_meta import arch, meta


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict] = None
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @classmethod
    def from_hf_dir(cls, path: str) -> "ModelConfig":
        with open(os.path.join(path, "config.json")) as f:
            c: dict[str, Any] = json.load(f)
        heads = c["num_attention_heads"]
        return cls(
            vocab_size=c["vocab_size"],
            hidden_size=c["hidden_size"],
            intermediate_size=c["intermediate_size"],
            num_layers=c["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=c.get("num_key_value_heads") or heads,
            head_dim=c.get("head_dim") or c["hidden_size"] // heads,
            rope_theta=float(c.get("rope_theta", 10000.0)),
            rope_scaling=c.get("rope_scaling"),
            rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(c.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
        )

    @classmethod
    def from_gguf(cls, reader) -> "ModelConfig":
        a = arch(reader)
        if a != "llama":
            raise ValueError(f"GGUF architecture {a!r} is not supported (llama only)")
        hidden = int(meta(reader, "llama.embedding_length"))
        heads = int(meta(reader, "llama.attention.head_count"))
        vocab = meta(reader, "llama.vocab_size")
        if vocab is None:
            vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
        names = {t.name for t in reader.tensors}
        scaling = None
        factor = meta(reader, "llama.rope.scaling.factor")
        kind = meta(reader, "llama.rope.scaling.type")
        if factor and kind == "linear":
            scaling = {"rope_type": "linear", "factor": float(factor)}
        return cls(
            vocab_size=int(vocab),
            hidden_size=hidden,
            intermediate_size=int(meta(reader, "llama.feed_forward_length")),
            num_layers=int(meta(reader, "llama.block_count")),
            num_heads=heads,
            num_kv_heads=int(meta(reader, "llama.attention.head_count_kv", heads)),
            head_dim=int(meta(reader, "llama.rope.dimension_count", hidden // heads)),
            rope_theta=float(meta(reader, "llama.rope.freq_base", 10000.0)),
            rope_scaling=scaling,
            rms_norm_eps=float(meta(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
            max_position_embeddings=int(meta(reader, "llama.context_length", 2048)),
            tie_word_embeddings="output.weight" not in names,
        )


TINY_CONFIG = ModelConfig(
    vocab_size=259,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
)


@dataclass
class EngineConfig:
    """Everything ``TorchEngine`` needs. ``num_blocks=None``: derived from ``kv_cache_bytes``."""

    model: str = "tiny"
    dtype: str = "float32"  # "float32" | "bfloat16"
    device: str = "cpu"  # "cpu" | "cuda" | "cuda:N"
    block_size: int = 16
    num_blocks: Optional[int] = None
    kv_cache_bytes: int = 256 << 20
    max_batch_size: int = 64
    max_num_batched_tokens: int = 512
    max_model_len: Optional[int] = None  # default: the model's context length
    enable_chunked_prefill: bool = True
    # a HIGH request whose blocks do not fit preempts lower-priority running requests
    priority_preemption: bool = True
    seed: int = 0
    num_threads: Optional[int] = None  # torch.set_num_threads on CPU; None leaves it alone
    prepack_weights: bool = True  # CPU: oneDNN-packed weights (model.Linear)
    record_logits: bool = False  # tests: keep every sampled row's logits per request

    def validate(self) -> None:
        if self.block_size <= 0 or self.max_batch_size <= 0 or self.max_num_batched_tokens <= 0:
            raise ValueError("block_size, max_batch_size and max_num_batched_tokens must be > 0")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"unsupported dtype {self.dtype!r}")
