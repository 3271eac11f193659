"""Tokenizers for real models, satisfying ``llumnix_zmq.tokenizer.base.Tokenizer``.

Never imports torch: the frontend uses this module. GGUF metadata is read with ``gguf`` (numpy).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Sequence

from ...tokenizer.base import ByteTokenizer
from .gguf_meta import meta, open_gguf
from .source import resolve_model

GGUF_CONTROL = 3
GGUF_USER_DEFINED = 4


class ModelTokenizer:
    """A ``tokenizers.Tokenizer`` plus the model's BOS rule, EOS ids and jinja chat template."""

    def __init__(
        self,
        tok,
        *,
        bos_token_id: int | None,
        eos_token_ids: tuple[int, ...],
        add_bos: bool,
        chat_template: str | None,
        special_tokens: dict[str, str] | None = None,
    ):
        self._tok = tok
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self.bos_token_id = bos_token_id
        self.eos_token_ids = eos_token_ids
        self.add_bos = add_bos
        self._template = _compile_template(chat_template) if chat_template else None
        self._special = special_tokens or {}

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if add_bos and self.add_bos and self.bos_token_id is not None:
            if not ids or ids[0] != self.bos_token_id:
                ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def apply_chat_template(self, messages: list[dict]) -> str:
        if self._template is None:
            return ByteTokenizer().apply_chat_template(messages)
        return self._template.render(messages=messages, add_generation_prompt=True, **self._special)


def _compile_template(source: str):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


@lru_cache(maxsize=8)
def load_model_tokenizer(model: str):
    """The tokenizer of a model spec ("tiny", "smollm2", a .gguf file or an HF directory)."""
    src = resolve_model(model)
    if src.kind == "tiny":
        return ByteTokenizer()
    if src.kind == "gguf":
        return _gguf_tokenizer(src.path)
    return _hf_tokenizer(src.path)


# --------------------------------------------------------------------------- GGUF


def _gguf_tokenizer(path: str) -> ModelTokenizer:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    r = open_gguf(path)
    kind = meta(r, "tokenizer.ggml.model", "gpt2")
    if kind != "gpt2":
        raise ValueError(f"GGUF tokenizer model {kind!r} is not supported (gpt2 BPE only)")
    tokens = meta(r, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in meta(r, "tokenizer.ggml.merges", [])]
    types = meta(r, "tokenizer.ggml.token_type", [1] * len(tokens))
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if meta(r, "tokenizer.ggml.pre", "gpt2") in ("smollm", "starcoder", "refact"):
        # llama.cpp's smollm pre-tokenizer: single digits, then the GPT-2 regex
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types) if t == GGUF_CONTROL]
    )
    user = [AddedToken(tokens[i], normalized=False) for i, t in enumerate(types) if t == GGUF_USER_DEFINED]
    if user:
        tok.add_tokens(user)
    bos = meta(r, "tokenizer.ggml.bos_token_id")
    eos = meta(r, "tokenizer.ggml.eos_token_id")
    special = {}
    if bos is not None:
        special["bos_token"] = tokens[int(bos)]
    if eos is not None:
        special["eos_token"] = tokens[int(eos)]
    return ModelTokenizer(
        tok,
        bos_token_id=None if bos is None else int(bos),
        eos_token_ids=() if eos is None else (int(eos),),
        add_bos=bool(meta(r, "tokenizer.ggml.add_bos_token", True)),
        chat_template=meta(r, "tokenizer.chat_template"),
        special_tokens=special,
    )


# --------------------------------------------------------------------------- Hugging Face dir


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _token_content(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


def _hf_tokenizer(path: str) -> ModelTokenizer:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    cfg = _read_json(os.path.join(path, "tokenizer_config.json"))
    gen = _read_json(os.path.join(path, "generation_config.json"))
    model_cfg = _read_json(os.path.join(path, "config.json"))
    bos_tok, eos_tok = _token_content(cfg.get("bos_token")), _token_content(cfg.get("eos_token"))
    bos = tok.token_to_id(bos_tok) if bos_tok else model_cfg.get("bos_token_id")
    eos = gen.get("eos_token_id", model_cfg.get("eos_token_id"))
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
    if eos_tok and tok.token_to_id(eos_tok) is not None and tok.token_to_id(eos_tok) not in eos_ids:
        eos_ids = (*eos_ids, tok.token_to_id(eos_tok))
    if "add_bos_token" in cfg:
        add_bos = bool(cfg["add_bos_token"])
    else:  # the post-processor decides (Llama's TemplateProcessing prepends BOS)
        probe = tok.encode("a", add_special_tokens=True).ids
        add_bos = bool(probe) and bos is not None and probe[0] == bos
    template = cfg.get("chat_template")
    if isinstance(template, list):  # named templates: take "default"
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if template is None and os.path.isfile(os.path.join(path, "chat_template.jinja")):
        with open(os.path.join(path, "chat_template.jinja")) as f:
            template = f.read()
    special = {k: v for k, v in (("bos_token", bos_tok), ("eos_token", eos_tok)) if v}
    return ModelTokenizer(
        tok,
        bos_token_id=bos,
        eos_token_ids=eos_ids,
        add_bos=add_bos,
        chat_template=template,
        special_tokens=special,
    )
