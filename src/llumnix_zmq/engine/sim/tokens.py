"""Pseudo tokens of the ``sim`` engine: the token at output index ``i`` of a request is
``pseudo_token(prompt_hash(prompt, seed), i)``, printable ASCII (letters 97..122 and space 32).
A pure function of the prompt, the seed and the index, so a migrated, preempted or resumed
request produces exactly the tokens of an undisturbed one, and tests can compute them."""

from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import numpy as np

_M64 = (1 << 64) - 1
_ALPHABET = tuple(range(97, 123)) + (32,) * 6  # 32 symbols: ~1 space in 5 letters


def prompt_hash(prompt_token_ids: Sequence[int], seed: Optional[int] = None) -> int:
    """Stable 64-bit key of a request's token stream (seed None counts as 0)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(np.asarray(prompt_token_ids, dtype=np.int64).tobytes())
    h.update(((seed or 0) & _M64).to_bytes(8, "little"))
    return int.from_bytes(h.digest(), "little")


def pseudo_token(prompt_ids_hash: int, index: int) -> int:
    """The token at output index ``index`` (splitmix64 of key and index, into the alphabet)."""
    x = (prompt_ids_hash + (index + 1) * 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return _ALPHABET[(x ^ (x >> 31)) & 31]


def pseudo_tokens(prompt_token_ids: Sequence[int], seed: Optional[int], start: int, end: int) -> list[int]:
    key = prompt_hash(prompt_token_ids, seed)
    return [pseudo_token(key, i) for i in range(start, end)]
