"""The paged engine's logits equal a dense, cache-free reference forward written here."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from llumnix_zmq.engine.base import EngineRequest
from llumnix_zmq.engine.torch.weights import load_weights, unpermute_qk

from torch_engine_helpers import assert_clean, byte_prompt, greedy, run, tiny_engine


def _rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x, cos, sin):  # x [heads, T, d]
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


def dense_logits(cfg, sd, ids: list[int]) -> torch.Tensor:
    """fp32, no cache, full causal mask, K/V repeated for GQA: logits [T, V]."""
    sd = {k: v.float() for k, v in sd.items()}
    T, d, H, KVH = len(ids), cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    x = sd["model.embed_tokens.weight"][torch.tensor(ids)]
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2).float() / d))
    ang = torch.arange(T).float()[:, None] * inv[None, :]
    cos, sin = torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin()
    causal = torch.full((T, T), float("-inf")).triu(1)
    for n in range(cfg.num_layers):
        p = f"model.layers.{n}."
        h = _rms(x, sd[p + "input_layernorm.weight"], cfg.rms_norm_eps)
        q = (h @ sd[p + "self_attn.q_proj.weight"].T).view(T, H, d).transpose(0, 1)
        k = (h @ sd[p + "self_attn.k_proj.weight"].T).view(T, KVH, d).transpose(0, 1)
        v = (h @ sd[p + "self_attn.v_proj.weight"].T).view(T, KVH, d).transpose(0, 1)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        k, v = k.repeat_interleave(H // KVH, 0), v.repeat_interleave(H // KVH, 0)
        att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d) + causal, dim=-1)
        o = (att @ v).transpose(0, 1).reshape(T, H * d)
        x = x + o @ sd[p + "self_attn.o_proj.weight"].T
        h = _rms(x, sd[p + "post_attention_layernorm.weight"], cfg.rms_norm_eps)
        g, u = h @ sd[p + "mlp.gate_proj.weight"].T, h @ sd[p + "mlp.up_proj.weight"].T
        x = x + (F.silu(g) * u) @ sd[p + "mlp.down_proj.weight"].T
    return _rms(x, sd["model.norm.weight"], cfg.rms_norm_eps) @ sd["lm_head.weight"].T


def check_logits_match(engine, model: str, prompts: list[list[int]], max_tokens: int) -> None:
    reqs = [EngineRequest(f"r{i}", p, greedy(max_tokens)) for i, p in enumerate(prompts)]
    out = run(engine, reqs)
    cfg, sd = load_weights(model, "float32")
    for r in reqs:
        toks = r.prompt_token_ids + out[r.request_id]
        ref = dense_logits(cfg, sd, toks[:-1])[len(r.prompt_token_ids) - 1 :]
        got = torch.stack(engine.logits_log[r.request_id])
        assert got.shape == ref.shape
        rel = ((got - ref).norm(dim=-1) / ref.norm(dim=-1)).max().item()
        assert rel < 1e-4, rel
    assert_clean(engine)


@pytest.mark.parametrize("chunked", [True, False])
def test_tiny_logits_match_dense_reference(chunked):
    rng = random.Random(1)
    # a batch of several lengths: chunked prefill (start > 0), batched padded decode, block edges
    prompts = [byte_prompt(rng, n) for n in (1, 7, 33, 50)]
    eng = tiny_engine(record_logits=True, max_num_batched_tokens=20 if chunked else 64,
                      enable_chunked_prefill=chunked)
    check_logits_match(eng, "tiny", prompts, max_tokens=12)


def test_unpermute_inverts_llama_cpp_permutation():
    w = torch.arange(8 * 3 * 5, dtype=torch.float32).reshape(24, 5).numpy()
    n_head = 3  # llama.cpp convert_hf_to_gguf.LlamaModel.permute
    permuted = w.reshape(n_head, 2, 24 // n_head // 2, 5).swapaxes(1, 2).reshape(w.shape)
    assert (unpermute_qk(permuted, n_head) == w).all()


def test_tiny_weights_are_seeded():
    _, a = load_weights("tiny", seed=0)
    _, b = load_weights("tiny", seed=0)
    _, c = load_weights("tiny", seed=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["lm_head.weight"], c["lm_head.weight"])


def test_bfloat16_engine_tracks_float32():
    rng = random.Random(2)
    prompt = byte_prompt(rng, 24)
    f32 = tiny_engine(record_logits=True)
    bf16 = tiny_engine(record_logits=True, dtype="bfloat16")
    run(f32, [EngineRequest("a", prompt, greedy(1))])
    run(bf16, [EngineRequest("a", prompt, greedy(1))])
    a, b = f32.logits_log["a"][0], bf16.logits_log["a"][0]
    assert ((a - b).norm() / a.norm()).item() < 0.05
    assert bf16.kv.pool.dtype == torch.bfloat16
    assert_clean(bf16)
