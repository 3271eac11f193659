"""A tiny random-weight Llama in Hugging Face layout, for vLLM on a CPU (tests, benchmarks).

vLLM's CPU build constrains the shape: head_dim in {32, 64, …} (here 128 / 4 = 32), block size a
multiple of 32. The tokenizer is a byte-level BPE trained with ``tokenizers`` on a small
synthetic corpus and saved as ``PreTrainedTokenizerFast`` (``tokenizer.json`` +
``tokenizer_config.json``), so vLLM, transformers and our frontend all load the same files.
Weights are deterministic (``seed``); ``initializer_range`` is raised from Llama's 0.02 so the
logits are not nearly flat (greedy decoding then has no float-noise ties to flip).

    path = build_tiny_llama("/tmp/tiny-llama")   # idempotent: reuses a complete directory
"""

from __future__ import annotations

import json
import os

TINY_SHAPE = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
SPECIALS = ("<s>", "</s>", "<pad>")  # ids 0, 1, 2
_MARKER = "llumnix_tiny.json"


def _corpus() -> list[str]:
    words = ("the cat dog bird fish runs jumps sleeps eats quickly slowly over under red blue "
             "green big small one two three four five model token block cache engine request "
             "migrate decode prefill batch memory serve stream hello world").split()
    lines = []
    for i in range(400):
        n = 4 + i % 9
        lines.append(" ".join(words[(i * 7 + j * 13) % len(words)] for j in range(n)) + f" {i}.")
    return lines


def _train_tokenizer(path: str, vocab_size: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.save_pretrained(path)


def build_tiny_llama(path: str, seed: int = 0, initializer_range: float = 0.1) -> str:
    """Write the model and tokenizer into ``path`` (created) unless already there; return it."""
    marker = os.path.join(path, _MARKER)
    want = {"seed": seed, "initializer_range": initializer_range, **TINY_SHAPE}
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == want:
                return path
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tmp = f"{path}.tmp-{os.getpid()}"  # built aside, then renamed: concurrent builders are safe
    os.makedirs(tmp, exist_ok=True)
    _train_tokenizer(tmp, TINY_SHAPE["vocab_size"])
    cfg = LlamaConfig(**TINY_SHAPE, bos_token_id=0, eos_token_id=1, pad_token_id=2,
                      initializer_range=initializer_range, tie_word_embeddings=False,
                      torch_dtype="float32")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    model.save_pretrained(tmp, safe_serialization=True)
    with open(os.path.join(tmp, _MARKER), "w") as f:
        json.dump(want, f)
    if os.path.exists(path):
        shutil.rmtree(path, ignore_errors=True)
    try:
        os.replace(tmp, path)
    except OSError:  # another process renamed its copy first
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def default_tiny_dir() -> str:
    """Where ``--model tiny`` builds its files for the vllm engine (one per user)."""
    root = os.environ.get("LLUMNIX_CACHE", os.path.join(os.path.expanduser("~"), ".cache"))
    return os.path.join(root, "llumnix-zmq", "vllm-tiny-llama")
