"""``TorchEngine``: the paged-KV Llama engine behind ``llumnix_zmq.engine.base.Engine``.

One step = schedule (scheduler.py) → one batched forward over every scheduled chunk
(model.py, attention.py) → sample the requests whose chunk reached their end (sampler.py) →
finish checks → free finished requests' blocks → deltas.

Block ownership (``allocator_check`` verifies it): every used block belongs to exactly one
request's block table or to one migration reservation (``reserve_blocks`` → ``import_request``
or ``release_blocks``).
"""

from __future__ import annotations

import dataclasses
import time

import msgpack
import torch

from ...clock import Clock, SystemClock
from ...protocol.messages import (FinishReason, InstanceLoad, RequestLoad, RequestState,
                                  TokenDelta)
from ..base import Engine, EngineError, EngineRequest, MigrationCandidate, StepResult
from ..blocks import BlockAllocator, blocks_for_tokens
from .attention import build_metadata
from .config import EngineConfig
from .kv_cache import KVCache
from .model import LlamaModel
from .sampler import generator_state, make_generator, restore_generator, sample
from .scheduler import Chunk, Scheduler, Seq, Status
from .source import resolve_model
from .tokenizer import load_model_tokenizer
from .weights import DTYPES, load_weights

EXTRA_VERSION = 1


class TorchEngine(Engine):
    kind = "torch"

    def __init__(self, config: EngineConfig | None = None, clock: Clock | None = None, **options):
        cfg = dataclasses.replace(config or EngineConfig(), **options)
        cfg.validate()
        self.config = cfg
        self.clock = clock or SystemClock()
        if cfg.num_threads and not cfg.device.startswith("cuda"):
            torch.set_num_threads(cfg.num_threads)
        self.device = torch.device(cfg.device)
        self.dtype = DTYPES[cfg.dtype]
        self.model_name = resolve_model(cfg.model).name
        self.model_config, sd = load_weights(cfg.model, cfg.dtype, cfg.seed)
        mc = self.model_config
        self.model = LlamaModel(mc, sd, self.device, cfg.prepack_weights)
        del sd
        self.eos_token_ids = tuple(load_model_tokenizer(cfg.model).eos_token_ids)
        self.block_size = cfg.block_size
        per_block = KVCache.bytes_per_block(mc.num_layers, cfg.block_size, mc.num_kv_heads,
                                            mc.head_dim, self.dtype)
        self.kv_bytes_per_token = per_block // cfg.block_size
        self.num_blocks = cfg.num_blocks or max(1, cfg.kv_cache_bytes // per_block)
        self.kv = KVCache(mc.num_layers, self.num_blocks, cfg.block_size, mc.num_kv_heads,
                          mc.head_dim, self.dtype, self.device)
        self.allocator = BlockAllocator(self.num_blocks)
        # a request alone must always fit the pool, else preempting itself would never end
        self.max_model_len = min(cfg.max_model_len or mc.max_position_embeddings,
                                 mc.max_position_embeddings, self.num_blocks * cfg.block_size)
        self.max_batch_size = cfg.max_batch_size
        self.sched = Scheduler(self.allocator, cfg.block_size, cfg.max_batch_size,
                               cfg.max_num_batched_tokens, cfg.enable_chunked_prefill,
                               cfg.priority_preemption)
        self._reserved: set[int] = set()
        self.logits_log: dict[str, list[torch.Tensor]] = {}

    # ------------------------------------------------------------------ serving
    def add_request(self, req: EngineRequest) -> None:
        if req.request_id in self.sched.seqs:
            raise EngineError(f"duplicate request id {req.request_id!r}")
        self._check_request(req.prompt_token_ids, req.output_token_ids, req.sampling.max_tokens)
        seq = Seq(
            request_id=req.request_id, prompt=list(req.prompt_token_ids), sampling=req.sampling,
            priority=req.priority, arrival_time=req.arrival_time,
            frontend_address=req.frontend_address, order=self.sched.next_order(),
            generator=make_generator(req.request_id, req.sampling.seed),
            output=list(req.output_token_ids),
        )
        self.sched.add_waiting(seq)

    def _check_request(self, prompt, output, max_tokens: int) -> None:
        n = len(prompt) + len(output)
        vocab = self.model_config.vocab_size
        if not prompt:
            raise EngineError("empty prompt")
        if any(not 0 <= t < vocab for t in prompt) or any(not 0 <= t < vocab for t in output):
            raise EngineError(f"token id out of range [0, {vocab})")
        if n >= self.max_model_len:
            raise EngineError(f"{n} tokens leave no room under max_model_len {self.max_model_len}")
        if blocks_for_tokens(n + 1, self.block_size) > self.num_blocks:
            raise EngineError(f"{n} tokens can never fit in {self.num_blocks} blocks")
        if max_tokens - len(output) <= 0:
            raise EngineError("max_tokens already reached")

    def abort_request(self, request_id: str) -> bool:
        """Frees the request now; emits no delta (the caller answers the client)."""
        seq = self.sched.seqs.get(request_id)
        if seq is None:
            return False
        self.sched.remove(seq)
        self.logits_log.pop(request_id, None)
        return True

    def has_work(self) -> bool:
        return self.sched.has_work()

    def step(self) -> StepResult:
        plan = self.sched.schedule(self.clock.now())
        if not plan.chunks:
            return StepResult([], 0.0, num_preempted=len(plan.preempted))
        t0 = time.perf_counter()
        logits = self._forward(plan.chunks)
        deltas = self._sample_and_finish(plan.chunks, logits)
        duration = time.perf_counter() - t0
        n_decode = sum(1 for c in plan.chunks if c.n == 1 and c.start > 0)
        n_prefill = sum(c.n for c in plan.chunks) - n_decode
        return StepResult(deltas, duration, n_prefill, n_decode, len(plan.preempted))

    def _forward(self, chunks: list[Chunk]) -> torch.Tensor:
        ids, pos, rows, row = [], [], [], 0
        for c in chunks:
            ids.extend(c.seq.token(i) for i in range(c.start, c.start + c.n))
            pos.extend(range(c.start, c.start + c.n))
            row += c.n
            if c.samples:
                rows.append(row - 1)
        group = self.model_config.num_heads // self.model_config.num_kv_heads
        meta = build_metadata([(c.seq.blocks, c.start, c.n) for c in chunks], self.block_size,
                              group, self.device)
        dev = self.device
        logits = self.model.forward(
            torch.tensor(ids, dtype=torch.long, device=dev),
            torch.tensor(pos, dtype=torch.long, device=dev),
            meta, self.kv, torch.tensor(rows, dtype=torch.long, device=dev),
        )
        for c in chunks:
            c.seq.num_computed += c.n
        return logits.cpu()

    def _sample_and_finish(self, chunks: list[Chunk], logits: torch.Tensor) -> list[TokenDelta]:
        deltas, j = [], 0
        for c in chunks:
            if not c.samples:
                continue
            seq, row = c.seq, logits[j]
            j += 1
            if self.config.record_logits:
                self.logits_log.setdefault(seq.request_id, []).append(row.clone())
            tok = sample(row, seq.sampling, seq.generator)
            start = len(seq.output)
            seq.output.append(tok)
            reason = self._finish_reason(seq, tok)
            if reason != FinishReason.NONE:
                self.sched.remove(seq)
            deltas.append(TokenDelta(seq.request_id, start, (tok,), reason, len(seq.prompt)))
        return deltas

    def _finish_reason(self, seq: Seq, tok: int) -> FinishReason:
        sp = seq.sampling
        if (not sp.ignore_eos and tok in self.eos_token_ids) or tok in sp.stop_token_ids:
            return FinishReason.STOP
        if len(seq.output) >= sp.max_tokens or seq.num_tokens >= self.max_model_len:
            return FinishReason.LENGTH
        return FinishReason.NONE

    def load(self) -> InstanceLoad:
        s = self.sched
        reqs = [RequestLoad(q.request_id, len(q.blocks), q.priority, q.num_tokens, True,
                            q.status == Status.SUSPENDED)
                for q in s.seqs.values() if q.status != Status.WAITING]
        reqs += [RequestLoad(q.request_id, blocks_for_tokens(q.num_tokens, self.block_size),
                             q.priority, q.num_tokens, False) for q in s.waiting]
        return InstanceLoad(
            num_blocks_total=self.num_blocks, num_blocks_used=self.allocator.num_used,
            num_running=len(s.running), num_waiting=len(s.waiting),
            max_batch_size=self.max_batch_size, block_size=self.block_size,
            requests=tuple(reqs), num_migrating_in=1 if self._reserved else 0,
        )

    def num_free_blocks(self) -> int:
        return self.allocator.num_free

    def request_block_ids(self, request_id: str) -> list[int]:
        return list(self._seq(request_id).blocks)

    def _seq(self, request_id: str) -> Seq:
        seq = self.sched.seqs.get(request_id)
        if seq is None:
            raise EngineError(f"unknown request {request_id!r}")
        return seq

    # ------------------------------------------------------------------ migration
    def migration_candidates(self) -> list[MigrationCandidate]:
        return [
            MigrationCandidate(q.request_id, q.num_tokens, len(q.blocks), q.priority,
                               q.arrival_time, q.running_since or 0.0)
            for q in self.sched.running if q.prefill_done
        ]

    def num_full_blocks(self, request_id: str) -> int:
        return self._seq(request_id).num_computed // self.block_size

    def export_blocks(self, request_id: str, start: int, end: int, to_numpy: bool = True,
                      out=None) -> list:
        """[one contiguous [n, L, bs, 2, kv_heads, head_dim] buffer]: numpy (bfloat16 as its
        int16 bit pattern) for the ZeroMQ path, gathered into ``out`` when given (see
        ``export_blocks_into``), or a device tensor with ``to_numpy=False``."""
        blocks = self._seq(request_id).blocks
        if not 0 <= start <= end <= len(blocks):
            raise EngineError(f"block range [{start}, {end}) outside 0..{len(blocks)}")
        if start == end:
            return []
        return [self.kv.export(blocks[start:end], to_numpy, out)]

    def export_blocks_into(self, request_id: str, start: int, end: int, buffer) -> list:
        return self.export_blocks(request_id, start, end, out=buffer)

    def export_block_views(self, request_id: str, start: int, end: int,
                           min_frame_bytes: int) -> list | None:
        blocks = self._seq(request_id).blocks
        if not 0 <= start < end <= len(blocks):
            raise EngineError(f"block range [{start}, {end}) outside 0..{len(blocks)}")
        return self.kv.export_views(blocks[start:end], min_frame_bytes)

    def reserve_blocks(self, n: int) -> list[int] | None:
        if n < 0:
            raise EngineError("negative reservation")
        if not self.allocator.can_allocate(n):
            return None
        ids = self.allocator.allocate(n)
        self._reserved.update(ids)
        return ids

    def _check_reserved(self, block_ids: list[int]) -> None:
        if len(set(block_ids)) != len(block_ids) or not self._reserved.issuperset(block_ids):
            raise EngineError("blocks are not (uniquely) reserved")

    def import_blocks(self, block_ids: list[int], frames: list) -> None:
        self._check_reserved(block_ids)
        self.kv.import_(block_ids, frames)

    def release_blocks(self, block_ids: list[int]) -> None:
        self._check_reserved(block_ids)
        self._reserved.difference_update(block_ids)
        self.allocator.free(block_ids)

    def suspend(self, request_id: str) -> None:
        seq = self._seq(request_id)
        if seq.status != Status.RUNNING:
            raise EngineError(f"suspend: {request_id!r} is {seq.status.name}, not RUNNING")
        self.sched.suspend(seq)

    def resume(self, request_id: str) -> None:
        seq = self._seq(request_id)
        if seq.status != Status.SUSPENDED:
            raise EngineError(f"resume: {request_id!r} is {seq.status.name}, not SUSPENDED")
        self.sched.resume(seq)

    def export_state(self, request_id: str) -> RequestState:
        seq = self._seq(request_id)
        extra = {"v": EXTRA_VERSION, "model": self.model_name, "block_size": self.block_size,
                 "dtype": self.config.dtype, "num_blocks": len(seq.blocks)}
        return RequestState(
            request_id=seq.request_id, frontend_address=seq.frontend_address,
            prompt_token_ids=tuple(seq.prompt), output_token_ids=tuple(seq.output),
            sampling=seq.sampling, priority=seq.priority, num_computed_tokens=seq.num_computed,
            rng_state=generator_state(seq.generator), arrival_time=seq.arrival_time,
            engine_extra=msgpack.packb(extra),
        )

    def import_request(self, state: RequestState, block_ids: list[int]) -> None:
        if state.request_id in self.sched.seqs:
            raise EngineError(f"duplicate request id {state.request_id!r}")
        self._check_reserved(block_ids)
        self._check_extra(state.engine_extra)
        n_tok = len(state.prompt_token_ids) + len(state.output_token_ids)
        if not 0 < state.num_computed_tokens < n_tok:
            raise EngineError(f"num_computed_tokens {state.num_computed_tokens} of {n_tok}")
        if len(block_ids) < blocks_for_tokens(state.num_computed_tokens, self.block_size):
            raise EngineError("too few blocks for the computed tokens")
        try:
            gen = (restore_generator(state.rng_state) if state.rng_state
                   else make_generator(state.request_id, state.sampling.seed))
        except RuntimeError as exc:
            raise EngineError(f"bad rng_state: {exc}") from exc
        seq = Seq(
            request_id=state.request_id, prompt=list(state.prompt_token_ids),
            sampling=state.sampling, priority=state.priority, arrival_time=state.arrival_time,
            frontend_address=state.frontend_address, order=self.sched.next_order(),
            generator=gen, output=list(state.output_token_ids), blocks=list(block_ids),
            num_computed=state.num_computed_tokens, running_since=self.clock.now(),
        )
        self._reserved.difference_update(block_ids)
        self.sched.add_running(seq)

    def _check_extra(self, raw: bytes) -> None:
        if not raw:
            return
        try:
            extra = msgpack.unpackb(raw)
        except Exception as exc:  # msgpack raises several types for bad input
            raise EngineError(f"bad engine_extra: {exc}") from exc
        if not isinstance(extra, dict):
            raise EngineError("bad engine_extra")
        if extra.get("block_size", self.block_size) != self.block_size:
            raise EngineError(f"block size {extra.get('block_size')} != {self.block_size}")
        if extra.get("dtype", self.config.dtype) != self.config.dtype:
            raise EngineError(f"dtype {extra.get('dtype')} != {self.config.dtype}")

    def remove_request(self, request_id: str) -> None:
        self.sched.remove(self._seq(request_id))
        self.logits_log.pop(request_id, None)

    # ------------------------------------------------------------------ checks
    def allocator_check(self) -> None:
        """Raise AssertionError unless every used block has exactly one owner."""
        self.allocator.check()
        owned: list[int] = list(self._reserved)
        for seq in self.sched.seqs.values():
            owned.extend(seq.blocks)
        if len(owned) != len(set(owned)):
            raise AssertionError("a block has two owners")
        used = {b for b in range(self.num_blocks) if self.allocator.is_used(b)}
        if set(owned) != used:
            raise AssertionError(f"leaked blocks: {sorted(used - set(owned))[:8]}, "
                                 f"unowned-but-free: {sorted(set(owned) - used)[:8]}")

    def close(self) -> None:
        self.kv.pool = torch.empty(0)
