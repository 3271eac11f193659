"""The Hugging Face directory loader (config.json + safetensors + tokenizer.json)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

from llumnix_zmq.engine.base import EngineRequest
from llumnix_zmq.engine.torch import make_torch_engine
from llumnix_zmq.engine.torch.config import TINY_CONFIG, ModelConfig
from llumnix_zmq.engine.torch.model import rope_inv_freq
from llumnix_zmq.engine.torch.tokenizer import load_model_tokenizer
from llumnix_zmq.engine.torch.weights import load_weights

from torch_engine_helpers import assert_clean, greedy, run, tiny_engine

TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}" \
           "{% if add_generation_prompt %}<assistant>{% endif %}"


def _byte_tokenizer_json(path) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t in ("<s>", "</s>", "<pad>")])
    tok.save(str(path / "tokenizer.json"))


def make_hf_dir(tmp_path, **config_extra):
    cfg = TINY_CONFIG
    _, sd = load_weights("tiny")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "model.safetensors"))
    config = {
        "architectures": ["LlamaForCausalLM"], "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads, "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.rms_norm_eps, "max_position_embeddings": 2048,
        "tie_word_embeddings": False, "bos_token_id": 256, "eos_token_id": 257, **config_extra,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True, "chat_template": TEMPLATE}))
    _byte_tokenizer_json(tmp_path)
    return str(tmp_path)


def test_hf_dir_equals_tiny(tmp_path):
    path = make_hf_dir(tmp_path)
    tok = load_model_tokenizer(path)
    ids = tok.encode("hello there")
    assert ids[0] == 256 and tok.decode(ids) == "hello there" and tok.eos_token_ids == (257,)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "<user>hi<assistant>"
    hf = make_torch_engine(path, num_blocks=64, block_size=4)
    ref = tiny_engine(num_blocks=64)
    reqs = lambda: [EngineRequest("a", ids, greedy(10))]
    assert run(hf, reqs()) == run(ref, reqs())
    assert_clean(hf)


def test_llama3_rope_scaling_is_read_and_applied(tmp_path):
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    path = make_hf_dir(tmp_path, rope_scaling=scaling, rope_theta=500000.0)
    cfg = ModelConfig.from_hf_dir(path)
    assert cfg.rope_scaling == scaling and cfg.rope_theta == 500000.0
    base = rope_inv_freq(ModelConfig(**{**cfg.__dict__, "rope_scaling": None}))
    inv = rope_inv_freq(cfg)
    wavelen = 2 * torch.pi / base
    assert torch.allclose(inv[wavelen < 64 / 4], base[wavelen < 64 / 4])  # high freq: unchanged
    assert torch.allclose(inv[wavelen > 64], base[wavelen > 64] / 8)  # low freq: divided
    eng = make_torch_engine(path, num_blocks=32, block_size=4)
    run(eng, [EngineRequest("a", [256, 65, 66], greedy(3))])
    assert_clean(eng)
