"""Tokenizers used by the frontend (and by engines' tests): one protocol, several sources."""

from .base import ByteTokenizer, Tokenizer, load_tokenizer

__all__ = ["ByteTokenizer", "Tokenizer", "load_tokenizer"]
