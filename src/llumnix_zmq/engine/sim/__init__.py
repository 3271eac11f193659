"""The ``sim`` engine backend: a latency model over real block accounting (no model, no GPU)."""

from .engine import SimConfig, SimEngine
from .tokens import prompt_hash, pseudo_token, pseudo_tokens
from .profiles import DEFAULT_PROFILE, PROFILES, LatencyProfile, fit_profiles, get_profile

__all__ = [
    "DEFAULT_PROFILE",
    "PROFILES",
    "LatencyProfile",
    "SimConfig",
    "SimEngine",
    "fit_profiles",
    "get_profile",
    "prompt_hash",
    "pseudo_token",
    "pseudo_tokens",
]
