"""Continuous batching for the torch engine: queues, token budget, blocks, preemption.

Policy (one ``schedule()`` per engine step):

1. Running requests, in (HIGH first, then FCFS) order, each get their next tokens — one for a
   decode, a chunk of the remaining prompt for a prefill — under ``max_num_batched_tokens``.
   When their blocks do not fit, the *last* running request (lowest priority, latest arrival)
   is preempted by recompute: its blocks are freed and it re-queues with its outputs, to be
   prefilled again (prompt + outputs) later. It may be the request being scheduled itself.
2. Only if nothing was preempted, waiting requests are admitted in the same order while the
   budget, ``max_batch_size`` and free blocks allow (head-of-line blocking: FCFS is strict).
   Priority preemption (``priority_preemption``): when the head of the queue is HIGH and its
   blocks do not fit, lower-priority running requests are preempted, last first, just enough
   to make room (and their chunks leave this step's plan) — only if that makes enough room;
   otherwise it waits as above.

Without chunked prefill a prompt is scheduled whole or not at all in a step.
Suspended requests keep their blocks and are never scheduled nor chosen as victims.
"""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass, field
from typing import Any

from ...protocol.messages import Priority, SamplingParams
from ..blocks import BlockAllocator, blocks_for_tokens


class Status(enum.IntEnum):
    WAITING = 1
    RUNNING = 2
    SUSPENDED = 3


@dataclass(eq=False)
class Seq:
    request_id: str
    prompt: list[int]
    sampling: SamplingParams
    priority: Priority
    arrival_time: float
    frontend_address: str
    order: int  # FCFS tie-break, assigned on arrival at this engine
    generator: Any  # torch.Generator (opaque here)
    output: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    blocks: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose K/V are in the cache
    running_since: float | None = None

    @property
    def key(self) -> tuple[int, int]:
        return (-int(self.priority), self.order)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.output)

    def token(self, i: int) -> int:
        p = len(self.prompt)
        return self.prompt[i] if i < p else self.output[i - p]

    @property
    def prefill_done(self) -> bool:
        return bool(self.output) and self.num_computed == self.num_tokens - 1


@dataclass
class Chunk:
    seq: Seq
    start: int  # position of the first new token
    n: int  # new tokens this step

    @property
    def samples(self) -> bool:
        """The chunk reaches the sequence's end, so the step samples its next token."""
        return self.start + self.n == self.seq.num_tokens


@dataclass
class Plan:
    chunks: list[Chunk]
    preempted: list[Seq]


class Scheduler:
    def __init__(self, allocator: BlockAllocator, block_size: int, max_batch_size: int,
                 max_num_batched_tokens: int, chunked_prefill: bool,
                 priority_preemption: bool = True):
        self.allocator = allocator
        self.block_size = block_size
        self.max_batch_size = max_batch_size
        self.budget = max_num_batched_tokens
        self.chunked = chunked_prefill
        self.priority_preemption = priority_preemption
        self.seqs: dict[str, Seq] = {}
        self.waiting: list[Seq] = []  # sorted by key
        self.running: list[Seq] = []  # sorted by key
        self._order = 0

    def next_order(self) -> int:
        self._order += 1
        return self._order

    # ------------------------------------------------------------------ queues
    def add_waiting(self, seq: Seq) -> None:
        seq.status = Status.WAITING
        self.seqs[seq.request_id] = seq
        bisect.insort(self.waiting, seq, key=lambda s: s.key)

    def add_running(self, seq: Seq) -> None:
        seq.status = Status.RUNNING
        self.seqs[seq.request_id] = seq
        bisect.insort(self.running, seq, key=lambda s: s.key)

    def suspend(self, seq: Seq) -> None:
        self.running.remove(seq)
        seq.status = Status.SUSPENDED

    def resume(self, seq: Seq) -> None:
        self.add_running(seq)

    def remove(self, seq: Seq) -> None:
        """Forget a request in any state and free its blocks."""
        if seq.status == Status.WAITING:
            self.waiting.remove(seq)
        elif seq.status == Status.RUNNING:
            self.running.remove(seq)
        if seq.blocks:
            self.allocator.free(seq.blocks)
            seq.blocks = []
        del self.seqs[seq.request_id]

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ------------------------------------------------------------------ policy
    def schedule(self, now: float) -> Plan:
        budget, chunks, preempted = self.budget, [], []
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = self._chunk_len(seq, budget)
            if n == 0:
                i += 1
                continue
            if not self._make_room(seq, n, preempted):
                break  # ``seq`` itself was preempted; everything after it already was
            chunks.append(Chunk(seq, seq.num_computed, n))
            budget -= n
            i += 1
        if not preempted:
            self._admit(budget, chunks, preempted, now)
        return Plan(chunks, preempted)

    def _chunk_len(self, seq: Seq, budget: int) -> int:
        remaining = seq.num_tokens - seq.num_computed
        if remaining <= budget:
            return remaining
        if self.chunked:
            return budget
        # unchunked: a sequence longer than the budget (a recompute after preemption) may run
        # alone in a step, else it would never run
        return remaining if budget == self.budget else 0

    def _grow(self, seq: Seq, n: int) -> int:
        return blocks_for_tokens(seq.num_computed + n, self.block_size) - len(seq.blocks)

    def _make_room(self, seq: Seq, n: int, preempted: list[Seq]) -> bool:
        need = self._grow(seq, n)
        while need > self.allocator.num_free:
            victim = self.running[-1]
            self._preempt(victim)
            preempted.append(victim)
            if victim is seq:
                return False
        if need > 0:
            seq.blocks.extend(self.allocator.allocate(need))
        return True

    def _preempt_for(self, seq: Seq, need: int, chunks: list[Chunk],
                     preempted: list[Seq]) -> int | None:
        """Priority preemption for the waiting ``seq``: preempt running requests of a lower
        priority, last first, until ``need`` blocks are free, and drop their chunks from the
        plan. Returns the budget those chunks held, or None (nothing preempted) when ``seq`` is
        not HIGH, the option is off, or preempting would not make enough room."""
        if not self.priority_preemption or seq.priority != Priority.HIGH:
            return None
        victims, room = [], self.allocator.num_free
        for victim in reversed(self.running):
            if room >= need or victim.priority >= seq.priority:
                break  # running is sorted HIGH first: no lower-priority request is left
            victims.append(victim)
            room += len(victim.blocks)
        if room < need:
            return None
        gone = set(victims)
        freed = sum(c.n for c in chunks if c.seq in gone)
        chunks[:] = [c for c in chunks if c.seq not in gone]
        for victim in victims:
            self._preempt(victim)
        preempted.extend(victims)
        return freed

    def _preempt(self, seq: Seq) -> None:
        self.running.remove(seq)
        self.allocator.free(seq.blocks)
        seq.blocks = []
        seq.num_computed = 0
        self.add_waiting(seq)

    def _admit(self, budget: int, chunks: list[Chunk], preempted: list[Seq],
               now: float) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.max_batch_size:
            seq = self.waiting[0]
            n = self._chunk_len(seq, budget)
            need = self._grow(seq, n)
            if n > 0 and need > self.allocator.num_free:
                freed = self._preempt_for(seq, need, chunks, preempted)
                if freed is None:
                    return
                budget += freed  # the victims' chunks left the plan: look at ``seq`` again
                continue
            if n == 0:
                return
            self.waiting.pop(0)
            seq.blocks.extend(self.allocator.allocate(need))
            if seq.running_since is None:
                seq.running_since = now
            self.add_running(seq)
            chunks.append(Chunk(seq, seq.num_computed, n))
            budget -= n
