"""A Llama-architecture decoder over the paged KV cache (RMSNorm, RoPE with the checkpoint's
settings, grouped-query attention, SwiGLU MLP, tied or untied embeddings).

Weights are fused per layer (q|k|v in one matrix, gate|up in one) so a step makes few, large
matmuls. Numerics follow Hugging Face's LlamaForCausalLM: RMSNorm in float32 then cast, rotary
cos/sin computed in float32 and cast to the activation dtype, half-split ``rotate_half``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .attention import AttnMetadata, paged_attention
from .config import ModelConfig
from .kv_cache import KVCache
from .weights import StateDict


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies [head_dim/2] with rope_scaling applied (default, linear, llama3)."""
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    sc = cfg.rope_scaling or {}
    kind = sc.get("rope_type", sc.get("type", "default"))
    if kind == "linear":
        inv = inv / float(sc["factor"])
    elif kind == "llama3":
        inv = _llama3_inv_freq(inv, sc)
    elif kind not in ("default", None):
        raise ValueError(f"rope_scaling type {kind!r} is not supported")
    return inv


def _llama3_inv_freq(inv: torch.Tensor, sc: dict) -> torch.Tensor:
    factor, low, high = float(sc["factor"]), float(sc["low_freq_factor"]), float(sc["high_freq_factor"])
    old_len = float(sc["original_max_position_embeddings"])
    low_wl, high_wl = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv
    out = torch.where(wavelen > low_wl, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = (wavelen >= high_wl) & (wavelen <= low_wl)
    return torch.where(medium, smoothed, out)


class Linear:
    """``y = x @ W.T``. On CPU the weight is pre-packed once for oneDNN (what IPEX and
    inductor do): small-batch decode matmuls then stream weights ~2x faster than ``F.linear``,
    which re-lays the weight out on every call. Elsewhere, or without the op, plain F.linear."""

    PACK_HINT = 128  # batch-size hint for oneDNN's blocked layout (good from 1 to 500 rows)

    def __init__(self, w: torch.Tensor, prepack: bool):
        self.out_features = w.shape[0]
        self.packed = None
        if prepack and w.device.type == "cpu" and _has_mkldnn_linear():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), self.PACK_HINT)
            self.weight = None
        else:
            self.weight = w.contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return F.linear(x, self.weight)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")


def _has_mkldnn_linear() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [N, heads, D]; cos/sin [N, 1, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class LlamaModel:
    def __init__(self, cfg: ModelConfig, sd: StateDict, device: torch.device, prepack: bool = True):
        self.cfg = cfg
        self.device = device
        self.prepack = prepack
        self.dtype = sd["model.embed_tokens.weight"].dtype
        self.scale = cfg.head_dim**-0.5
        self.embed = sd["model.embed_tokens.weight"].to(device)
        self.lm_head = Linear(sd["lm_head.weight"].to(device), prepack)
        self.norm = sd["model.norm.weight"].to(device)
        self.layers = [self._fuse(sd, f"model.layers.{n}.") for n in range(cfg.num_layers)]
        inv = rope_inv_freq(cfg)
        pos = torch.arange(cfg.max_position_embeddings, dtype=torch.float32)
        freqs = torch.outer(pos, inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = emb.cos().to(self.dtype).to(device)
        self.sin = emb.sin().to(self.dtype).to(device)

    def _fuse(self, sd: StateDict, p: str) -> dict:
        a, m = p + "self_attn.", p + "mlp."
        dev, pk = self.device, self.prepack
        qkv = torch.cat([sd[a + "q_proj.weight"], sd[a + "k_proj.weight"], sd[a + "v_proj.weight"]])
        gate_up = torch.cat([sd[m + "gate_proj.weight"], sd[m + "up_proj.weight"]])
        return {
            "in_norm": sd[p + "input_layernorm.weight"].to(dev),
            "post_norm": sd[p + "post_attention_layernorm.weight"].to(dev),
            "qkv": Linear(qkv.to(dev), pk),
            "o": Linear(sd[a + "o_proj.weight"].to(dev), pk),
            "gate_up": Linear(gate_up.to(dev), pk),
            "down": Linear(sd[m + "down_proj.weight"].to(dev), pk),
        }

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, positions: torch.Tensor, meta: AttnMetadata,
                kv: KVCache, logit_rows: torch.Tensor) -> torch.Tensor:
        """ids/positions [N]; writes K/V of the N tokens; returns float32 logits of ``logit_rows``."""
        c = self.cfg
        n = ids.shape[0]
        x = self.embed[ids]
        cos, sin = self.cos[positions][:, None, :], self.sin[positions][:, None, :]
        where = kv.locate(meta.slots)
        for li, w in enumerate(self.layers):
            h = rms_norm(x, w["in_norm"], c.rms_norm_eps)
            qkv = w["qkv"](h)
            q = qkv[:, : c.q_size].view(n, c.num_heads, c.head_dim)
            k = qkv[:, c.q_size : c.q_size + c.kv_size].view(n, c.num_kv_heads, c.head_dim)
            v = qkv[:, c.q_size + c.kv_size :].view(n, c.num_kv_heads, c.head_dim)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            kv.write(li, k, v, where)
            o = paged_attention(q, k, v, kv.layer(li), meta, self.scale)
            x = x + w["o"](o)
            h = rms_norm(x, w["post_norm"], c.rms_norm_eps)
            gu = w["gate_up"](h)
            g, u = gu.chunk(2, dim=-1)
            x = x + w["down"](F.silu(g) * u)
        h = rms_norm(x[logit_rows], self.norm, c.rms_norm_eps)
        return self.lm_head(h).float()
