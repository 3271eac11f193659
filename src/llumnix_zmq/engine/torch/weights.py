"""Load Llama-family weights into one state dict with Hugging Face names.

Sources: an HF directory (config.json + *.safetensors), a GGUF file (dequantized; q/k rows
un-permuted back to HF's rotary layout) or ``tiny`` (seeded random weights built here).
"""

from __future__ import annotations

import glob
import os

import numpy as np
import torch

from .config import TINY_CONFIG, ModelConfig
from .gguf_meta import open_gguf
from .source import resolve_model

StateDict = dict[str, torch.Tensor]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_weights(spec: str, dtype: str = "float32", seed: int = 0) -> tuple[ModelConfig, StateDict]:
    """(config, state dict in HF names, on CPU in ``dtype``) for a model spec."""
    src = resolve_model(spec)
    if src.kind == "tiny":
        cfg, sd = TINY_CONFIG, tiny_state_dict(TINY_CONFIG, seed)
    elif src.kind == "gguf":
        cfg, sd = load_gguf(src.path)
    else:
        cfg, sd = load_hf(src.path)
    tdt = DTYPES[dtype]
    return cfg, {k: v.to(tdt) for k, v in sd.items()}


# --------------------------------------------------------------------------- tiny


def tiny_state_dict(cfg: ModelConfig, seed: int = 0) -> StateDict:
    """Random weights scaled so that logits are well separated (greedy ties are unlikely)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std):
        return torch.randn(*shape, generator=g) * std

    h, i = cfg.hidden_size, cfg.intermediate_size
    sd: StateDict = {"model.embed_tokens.weight": rnd(cfg.vocab_size, h, std=1.0)}
    for n in range(cfg.num_layers):
        p = f"model.layers.{n}."
        sd[p + "input_layernorm.weight"] = 1.0 + rnd(h, std=0.1)
        sd[p + "post_attention_layernorm.weight"] = 1.0 + rnd(h, std=0.1)
        sd[p + "self_attn.q_proj.weight"] = rnd(cfg.q_size, h, std=h**-0.5)
        sd[p + "self_attn.k_proj.weight"] = rnd(cfg.kv_size, h, std=h**-0.5)
        sd[p + "self_attn.v_proj.weight"] = rnd(cfg.kv_size, h, std=h**-0.5)
        sd[p + "self_attn.o_proj.weight"] = rnd(h, cfg.q_size, std=cfg.q_size**-0.5)
        sd[p + "mlp.gate_proj.weight"] = rnd(i, h, std=h**-0.5)
        sd[p + "mlp.up_proj.weight"] = rnd(i, h, std=h**-0.5)
        sd[p + "mlp.down_proj.weight"] = rnd(h, i, std=i**-0.5)
    sd["model.norm.weight"] = 1.0 + rnd(h, std=0.1)
    sd["lm_head.weight"] = rnd(cfg.vocab_size, h, std=0.5)
    return sd


# --------------------------------------------------------------------------- Hugging Face


def load_hf(path: str) -> tuple[ModelConfig, StateDict]:
    from safetensors.torch import load_file

    cfg = ModelConfig.from_hf_dir(path)
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {path}")
    sd: StateDict = {}
    for f in files:
        sd.update(load_file(f, device="cpu"))
    sd = {k: v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")}
    if "lm_head.weight" not in sd:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    return cfg, sd


# --------------------------------------------------------------------------- GGUF

_GGUF_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GGUF_TOP = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def gguf_name_to_hf(name: str) -> str | None:
    if name in _GGUF_TOP:
        return _GGUF_TOP[name]
    parts = name.split(".")  # blk.N.attn_q.weight
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _GGUF_NAMES:
        return f"model.layers.{parts[1]}.{_GGUF_NAMES[parts[2]]}.{parts[3]}"
    return None


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Invert llama.cpp's convert-time permutation of q/k rows (interleaved → half-split rope)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load_gguf(path: str) -> tuple[ModelConfig, StateDict]:
    from gguf.quants import dequantize

    reader = open_gguf(path)
    cfg = ModelConfig.from_gguf(reader)
    sd: StateDict = {}
    for t in reader.tensors:
        name = gguf_name_to_hf(t.name)
        if name is None:
            continue
        arr = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        arr = arr.reshape([int(d) for d in reversed(t.shape)])  # GGUF lists dims fastest-first
        if name.endswith("q_proj.weight"):
            arr = unpermute_qk(arr, cfg.num_heads)
        elif name.endswith("k_proj.weight"):
            arr = unpermute_qk(arr, cfg.num_kv_heads)
        if not arr.flags.writeable or not arr.flags.c_contiguous:
            arr = np.array(arr, dtype=np.float32, order="C")  # own the memory (mmap is read-only)
        sd[name] = torch.from_numpy(arr)
    if "lm_head.weight" not in sd:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    return cfg, sd
