"""The ``sim`` engine: real block accounting and continuous batching, modelled step times, no model.

Token positions and KV. A request's tokens are ``prompt + outputs``; a position's KV is
"computed" once a step has processed it, and the sim's KV cache is a numpy pool
``[num_blocks, block_size]`` of int32 holding the token id computed at each slot (-1: empty)::

    tokens      p0 p1 p2 p3 p4 | o0 o1 o2        num_computed = 7: o2 is sampled, its KV not yet
    block table [b3: p0..p3] [b7: p4 o0 o1 -1]   written (the next decode writes it, samples o3)

Each step: running decodes first (1 token each, oldest admitted first), then running partial
prefills, then waiting requests (HIGH before NORMAL, FCFS within each; preempted ones return to
the front), all under ``max_num_batched_tokens``. Blocks are allocated as positions need them.

| event                                 | what happens                                     |
|---------------------------------------|--------------------------------------------------|
| a running request needs a block and   | preempt (recompute) the most recently admitted   |
| none is free                          | NORMAL running request (HIGH only if none):      |
|                                       | blocks freed, outputs kept, front of the waiting |
|                                       | queue; no admission in that step                 |
| a waiting request's whole prompt does | it waits (head of line: nothing behind it is     |
| not fit in the free blocks            | admitted), also with chunked prefill             |
| ... and it is HIGH, and preempting    | priority preemption (``priority_preemption``):   |
| NORMAL running requests would make    | those are preempted, most recently admitted      |
| room for it                           | first, just enough; then it is admitted          |
| all of a request's tokens computed    | sample the token at output index len(outputs)    |
| token in stop_token_ids               | finish STOP (the stop token is the last output)  |
| len(tokens) = prompt + max_tokens, or | finish LENGTH                                    |
| = max_model_len                       |                                                  |

Pseudo tokens: the token at output index ``i`` is ``pseudo_token(prompt_hash(prompt, seed), i)``,
printable ASCII (letters 97..122 and space 32), so a migrated, preempted or resumed request
produces exactly the tokens of an undisturbed one. The sim never emits EOS on its own: a request
stops early only on one of its ``stop_token_ids``; an EOS id there can never match (EOS is not
printable), so such requests run to max_tokens / max_model_len.

The engine never sleeps: ``StepResult.duration_s`` is the profile's modelled step time and the
caller (worker in real time, simulator in virtual time) decides what to do with it. A step with
nothing to schedule returns no deltas and duration 0.

Suspended requests keep their blocks and appear in ``load().requests`` (migrating=True) but not
in ``num_running`` or ``has_work()``. ``import_request`` adopts a request even past
``max_batch_size`` (the cap governs admission from the queue only).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ...clock import Clock, SystemClock
from ...protocol.messages import FinishReason, InstanceLoad, Priority, RequestLoad, TokenDelta
from ..base import Engine, EngineError, EngineRequest, StepResult
from ..blocks import BlockAllocator, blocks_for_tokens
from .migration import SimMigrationHooks
from .profiles import DEFAULT_PROFILE, get_profile
from .requests import _Batch, _Req, _Status
from .tokens import pseudo_token


@dataclass
class SimConfig:
    profile: str = DEFAULT_PROFILE
    block_size: int = 16
    num_blocks: Optional[int] = None  # None: the profile's KV capacity (rescaled to block_size)
    max_batch_size: int = 256
    max_num_batched_tokens: int = 4096
    chunked_prefill: bool = True
    max_model_len: int = 8192  # clamped to the pool's capacity in tokens
    vocab_size: int = 259  # byte tokenizer
    eos_token_id: int = 257
    model_name: str = "sim"
    # a HIGH request that does not fit preempts NORMAL running ones (as vLLM v0's priority
    # scheduling did), rather than waiting for them to finish
    priority_preemption: bool = True


class SimEngine(SimMigrationHooks, Engine):
    kind = "sim"

    def __init__(self, config: Optional[SimConfig] = None, clock: Optional[Clock] = None):
        cfg = config or SimConfig()
        self.config = cfg
        self.profile = get_profile(cfg.profile)
        if cfg.block_size <= 0 or cfg.max_batch_size <= 0 or cfg.max_num_batched_tokens <= 0:
            raise ValueError("block_size, max_batch_size and max_num_batched_tokens must be positive")
        self.block_size = cfg.block_size
        default_blocks = self.profile.num_blocks * self.profile.block_size // cfg.block_size
        self.num_blocks = default_blocks if cfg.num_blocks is None else cfg.num_blocks
        self.max_model_len = min(cfg.max_model_len, self.num_blocks * cfg.block_size)
        self.max_batch_size = cfg.max_batch_size
        self.max_num_batched_tokens = cfg.max_num_batched_tokens
        self.model_name = cfg.model_name
        self.vocab_size = cfg.vocab_size
        self.eos_token_id = cfg.eos_token_id
        self._clock = clock or SystemClock()
        self._alloc = BlockAllocator(self.num_blocks)
        self._kv = np.full((self.num_blocks, self.block_size), -1, dtype=np.int32)
        self._requests: dict[str, _Req] = {}
        self._running: dict[str, _Req] = {}  # admission order: the last is preempted first
        self._suspended: dict[str, _Req] = {}
        self._waiting = {Priority.HIGH: deque(), Priority.NORMAL: deque()}
        self._reserved: set[int] = set()
        self.num_steps = 0
        self.num_preemptions = 0
        self.num_preempted_tokens = 0  # computed positions thrown away (recompute loss)

    # --- serving -------------------------------------------------------------------------
    def add_request(self, req: EngineRequest) -> None:
        if req.request_id in self._requests:
            raise EngineError(f"duplicate request id {req.request_id!r}")
        r = self._new_req(req.request_id, req.prompt_token_ids, req.output_token_ids, req.sampling,
                          req.priority, req.frontend_address, req.arrival_time)
        if blocks_for_tokens(len(r.tokens), self.block_size) > self.num_blocks:
            raise EngineError(f"{len(r.tokens)} tokens can never fit {self.num_blocks} blocks")
        self._requests[r.request_id] = r
        self._waiting[r.priority].append(r)

    def abort_request(self, request_id: str) -> bool:
        r = self._requests.get(request_id)
        if r is None:
            return False
        self._drop(r)
        return True

    def has_work(self) -> bool:
        return bool(self._running or self._waiting[Priority.HIGH] or self._waiting[Priority.NORMAL])

    def step(self) -> StepResult:
        self.num_steps += 1
        batch = _Batch(self.max_num_batched_tokens)
        self._schedule_running(batch)
        if not batch.num_preempted:
            self._admit_waiting(batch)
        return self._execute(batch)

    def load(self) -> InstanceLoad:
        reqs = [RequestLoad(r.request_id, len(r.blocks), r.priority, len(r.tokens), True, False)
                for r in self._running.values()]
        reqs += [RequestLoad(r.request_id, len(r.blocks), r.priority, len(r.tokens), True, True)
                 for r in self._suspended.values()]
        bs = self.block_size
        for q in (self._waiting[Priority.HIGH], self._waiting[Priority.NORMAL]):
            reqs += [RequestLoad(r.request_id, blocks_for_tokens(len(r.tokens), bs), r.priority,
                                 len(r.tokens), False, False) for r in q]
        return InstanceLoad(
            num_blocks_total=self.num_blocks,
            num_blocks_used=self._alloc.num_used,
            num_running=len(self._running),
            num_waiting=self.num_waiting(),
            max_batch_size=self.max_batch_size,
            block_size=bs,
            requests=tuple(reqs),
        )

    def num_free_blocks(self) -> int:
        return self._alloc.num_free

    def num_waiting(self) -> int:
        return len(self._waiting[Priority.HIGH]) + len(self._waiting[Priority.NORMAL])

    def request_block_ids(self, request_id: str) -> list[int]:
        return list(self._get(request_id).blocks)

    # --- scheduling ----------------------------------------------------------------------
    def _schedule_running(self, batch: _Batch) -> None:
        full = self.block_size
        prefills = []
        for r in list(self._running.values()):  # _grow may preempt: iterate a copy
            if not r.in_decode:
                prefills.append(r)
            elif batch.budget <= 0:
                break
            elif r.status is _Status.RUNNING:  # not preempted earlier in this step
                if r.num_computed == len(r.blocks) * full and not self._grow(r, 1, batch):
                    continue
                batch.plan[r.request_id] = 1
                batch.budget -= 1
        for r in prefills:
            if batch.budget <= 0:
                return
            if r.status is not _Status.RUNNING:
                continue
            n = min(len(r.tokens) - r.num_computed, batch.budget)
            if self._grow(r, n, batch):
                batch.add(r, n)

    def _admit_waiting(self, batch: _Batch) -> None:
        chunked = self.config.chunked_prefill
        while batch.budget > 0 and len(self._running) < self.max_batch_size:
            q = self._waiting[Priority.HIGH] or self._waiting[Priority.NORMAL]
            if not q:
                return
            r = q[0]
            remaining = len(r.tokens)
            if chunked:
                n = min(remaining, batch.budget)
            elif remaining <= batch.budget:
                n = remaining
            elif remaining > self.max_num_batched_tokens and batch.prefill_tokens == 0:
                n = remaining  # too big for any budget: alone among prefills
            else:
                return
            need = blocks_for_tokens(n, self.block_size)
            # a chunked prompt is admitted only when all of it fits now: admitted on its first
            # chunk's blocks alone, it would preempt itself at the next chunk (it is the most
            # recently admitted), re-enter, and loop while looking "running" to the scheduler
            whole = blocks_for_tokens(remaining, self.block_size) if chunked else need
            if whole > self._alloc.num_free and not self._make_room_for_high(r, whole, batch):
                return
            q.popleft()
            r.blocks = self._allocate(need)
            r.status = _Status.RUNNING
            if r.running_since is None:
                r.running_since = self._clock.now()
            self._running[r.request_id] = r
            batch.add(r, n)

    def _grow(self, r: _Req, n: int, batch: _Batch) -> bool:
        """Give ``r`` the blocks for ``n`` more positions, preempting if needed; False if ``r``
        itself was preempted."""
        need = blocks_for_tokens(r.num_computed + n, self.block_size) - len(r.blocks)
        if need <= 0:
            return True
        while need > self._alloc.num_free:
            victim = self._victim()
            self._preempt(victim, batch)
            if victim is r:
                return False
        r.blocks += self._allocate(need)
        return True

    def _make_room_for_high(self, r: _Req, whole: int, batch: _Batch) -> bool:
        """Priority preemption for the waiting HIGH request ``r``: preempt NORMAL running
        requests, most recently admitted first, until ``whole`` blocks are free. Only if that
        makes enough room; otherwise nothing is preempted and False is returned."""
        if r.priority is not Priority.HIGH or not self.config.priority_preemption:
            return False
        victims, room = [], self._alloc.num_free
        for v in reversed(self._running.values()):
            if room >= whole:
                break
            if v.priority is not Priority.HIGH:
                victims.append(v)
                room += len(v.blocks)
        if room < whole:
            return False
        for v in victims:
            self._preempt(v, batch)
        return True

    def _victim(self) -> _Req:
        for r in reversed(self._running.values()):
            if r.priority is not Priority.HIGH:
                return r
        return next(reversed(self._running.values()))

    def _preempt(self, r: _Req, batch: _Batch) -> None:
        del self._running[r.request_id]
        batch.budget += batch.plan.pop(r.request_id, 0)
        batch.num_preempted += 1
        self.num_preemptions += 1
        self.num_preempted_tokens += r.num_computed
        self._alloc.free(r.blocks)
        r.blocks = []
        r.num_computed = 0
        r.in_decode = False
        r.status = _Status.WAITING
        self._waiting[r.priority].appendleft(r)

    def _execute(self, batch: _Batch) -> StepResult:
        deltas: list[TokenDelta] = []
        kv, bs = self._kv, self.block_size
        n_prefill = n_decode = kv_tokens = 0
        for rid, n in batch.plan.items():
            r = self._running[rid]
            pos = r.num_computed
            if r.in_decode:
                n_decode += 1
                kv_tokens += pos + 1
                kv[r.blocks[pos // bs], pos % bs] = r.tokens[pos]
            else:
                n_prefill += n
                self._write(r, pos, pos + n)
            r.num_computed = pos + n
            if r.num_computed == len(r.tokens):
                deltas.append(self._sample(r))
        duration = self.profile.step_s(n_prefill, n_decode, kv_tokens)
        return StepResult(deltas, duration, n_prefill, n_decode, batch.num_preempted)

    def _write(self, r: _Req, start: int, end: int) -> None:
        """Store the token ids of positions [start, end) in the request's blocks."""
        bs = self.block_size
        ids = np.asarray(r.tokens[start:end], dtype=np.int32)
        pos = start
        while pos < end:
            i, off = divmod(pos, bs)
            m = min(bs - off, end - pos)
            self._kv[r.blocks[i], off:off + m] = ids[pos - start:pos - start + m]
            pos += m

    def _sample(self, r: _Req) -> TokenDelta:
        index = len(r.tokens) - r.num_prompt
        tok = pseudo_token(r.key, index)
        r.tokens.append(tok)
        r.in_decode = True
        reason = FinishReason.NONE
        if tok in r.stop:
            reason = FinishReason.STOP
        elif len(r.tokens) >= r.max_len:
            reason = FinishReason.LENGTH
        if reason is not FinishReason.NONE:
            self._drop(r)
        return TokenDelta(r.request_id, index, (tok,), reason, r.num_prompt)

    # --- bookkeeping ---------------------------------------------------------------------
    def _new_req(self, rid, prompt, outputs, sampling, priority, frontend_address, arrival_time) -> _Req:
        if not prompt:
            raise EngineError(f"{rid}: empty prompt")
        if len(prompt) > self.max_model_len:
            raise EngineError(f"{rid}: {len(prompt)} prompt tokens > max_model_len {self.max_model_len}")
        if sampling.max_tokens < 1:
            raise EngineError(f"{rid}: max_tokens must be >= 1")
        vocab = self.vocab_size  # the KV pool stores token ids as int32: reject others here
        if any(not 0 <= t < vocab for t in prompt) or any(not 0 <= t < vocab for t in outputs):
            raise EngineError(f"{rid}: token id out of range [0, {vocab})")
        r = _Req(rid, prompt, outputs, sampling, priority, frontend_address, arrival_time, self.max_model_len)
        if outputs and len(r.tokens) >= r.max_len:
            raise EngineError(f"{rid}: already finished ({len(outputs)} output tokens)")
        return r

    def _allocate(self, n: int) -> list[int]:
        ids = self._alloc.allocate(n)
        self._kv[ids] = -1
        return ids

    def _get(self, request_id: str) -> _Req:
        r = self._requests.get(request_id)
        if r is None:
            raise EngineError(f"unknown request {request_id!r}")
        return r

    def _admitted(self, request_id: str) -> _Req:
        r = self._get(request_id)
        if r.status is _Status.WAITING:
            raise EngineError(f"{request_id} is waiting: it has no KV blocks")
        return r

    def _drop(self, r: _Req) -> None:
        if r.status is _Status.WAITING:
            self._waiting[r.priority].remove(r)
        elif r.status is _Status.RUNNING:
            del self._running[r.request_id]
        else:
            del self._suspended[r.request_id]
        if r.blocks:
            self._alloc.free(r.blocks)
            r.blocks = []
        del self._requests[r.request_id]

    def allocator_check(self) -> None:
        """Raise AssertionError unless every used block belongs to exactly one request table or
        pending reservation and the queues agree with the registry."""
        self._alloc.check()
        owned = list(self._reserved)
        for r in self._requests.values():
            if r.status is _Status.WAITING and r.blocks:
                raise AssertionError(f"waiting request {r.request_id} holds blocks")
            if len(r.blocks) < blocks_for_tokens(r.num_computed, self.block_size):
                raise AssertionError(f"{r.request_id}: {r.num_computed} positions in {len(r.blocks)} blocks")
            owned += r.blocks
        if len(set(owned)) != len(owned):
            raise AssertionError("a block is in two tables")
        if len(owned) != self._alloc.num_used or not all(self._alloc.is_used(b) for b in owned):
            raise AssertionError(f"leak: {self._alloc.num_used} used, {len(owned)} owned")
        if len(self._requests) != len(self._running) + len(self._suspended) + self.num_waiting():
            raise AssertionError("request registry and queues disagree")

    def remove_request(self, request_id: str) -> None:
        self._drop(self._get(request_id))
