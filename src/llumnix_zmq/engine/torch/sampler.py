"""Greedy and seeded nucleus sampling, one request at a time on the CPU.

Each request owns a CPU ``torch.Generator``; it is consumed only when the request samples with
temperature > 0, so a run is reproducible whatever the batch around it, and the generator state
(``get_state()`` bytes) migrates with the request.
"""

from __future__ import annotations

import hashlib

import torch

from ...protocol.messages import SamplingParams


def derive_seed(request_id: str, seed: int | None) -> int:
    """The request's seed, or a deterministic one derived from its id."""
    if seed is not None:
        return int(seed) & 0x7FFF_FFFF_FFFF_FFFF
    digest = hashlib.sha256(request_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def make_generator(request_id: str, seed: int | None) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(derive_seed(request_id, seed))
    return g


def generator_state(g: torch.Generator) -> bytes:
    return g.get_state().numpy().tobytes()


def restore_generator(state: bytes) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))
    return g


def is_greedy(sp: SamplingParams) -> bool:
    return sp.temperature <= 1e-5


def sample(logits: torch.Tensor, sp: SamplingParams, g: torch.Generator) -> int:
    """One token from a float32 CPU logits row [V]."""
    if is_greedy(sp):
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / sp.temperature, dim=-1)
    if sp.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        cum = torch.cumsum(sorted_p, dim=-1)
        keep = (cum - sorted_p) < sp.top_p  # the smallest prefix reaching top_p (≥ 1 token)
        sorted_p = sorted_p * keep
        choice = torch.multinomial(sorted_p, 1, generator=g)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=g))
