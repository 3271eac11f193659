"""The ``sim`` engine's per-request record and per-step batch plan (engine.py owns both)."""

from __future__ import annotations

from enum import Enum
from typing import Optional

from ...protocol.messages import Priority
from .tokens import prompt_hash


class _Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    SUSPENDED = "suspended"


class _Req:
    __slots__ = (
        "request_id", "tokens", "num_prompt", "sampling", "priority", "frontend_address",
        "arrival_time", "key", "stop", "max_len", "blocks", "num_computed", "status",
        "in_decode", "running_since",
    )

    def __init__(self, rid, prompt, outputs, sampling, priority, frontend_address, arrival_time, max_len):
        self.request_id = rid
        self.tokens = [int(t) for t in prompt] + [int(t) for t in outputs]
        self.num_prompt = len(prompt)
        self.sampling = sampling
        self.priority = Priority(priority)
        self.frontend_address = frontend_address
        self.arrival_time = arrival_time
        self.key = prompt_hash(prompt, sampling.seed)
        self.stop = frozenset(sampling.stop_token_ids)
        self.max_len = min(max_len, self.num_prompt + sampling.max_tokens)
        self.blocks: list[int] = []
        self.num_computed = 0
        self.status = _Status.WAITING
        self.in_decode = False  # prefill done: each step computes 1 position and samples
        self.running_since: Optional[float] = None


class _Batch:
    """The plan of one step: request id -> positions to compute, in execution order."""

    __slots__ = ("plan", "budget", "num_preempted", "prefill_tokens")

    def __init__(self, budget: int):
        self.plan: dict[str, int] = {}
        self.budget = budget
        self.num_preempted = 0
        self.prefill_tokens = 0

    def add(self, r: _Req, n: int) -> None:
        self.plan[r.request_id] = n
        self.budget -= n
        if not r.in_decode:
            self.prefill_tokens += n
