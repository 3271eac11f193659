"""GGUF metadata access (gguf + numpy only, so the frontend's tokenizer never imports torch)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=4)
def open_gguf(path: str):
    import gguf

    return gguf.GGUFReader(path)


def meta(reader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def arch(reader) -> str:
    return meta(reader, "general.architecture", "llama")
