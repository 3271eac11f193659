"""The ``vllm`` engine: our ``Engine`` interface over vLLM v1, in the worker process.

Why the synchronous, in-process engine core. The worker calls ``step()`` from its one engine
thread under its asyncio lock, and the migration hooks run between steps under the same lock.
vLLM's ``LLMEngine`` with ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` builds an ``EngineCore`` (the
v1 scheduler + a uni-process executor running the model runner) in this very process and steps
it on demand: one ``step()`` here is exactly one vLLM schedule + forward + update. No busy loop
and no second process run behind our back, so ``load()``, the block tables and the KV tensors
we read between steps are the scheduler's real, quiescent state. (``AsyncLLM`` steps on its
own in another process: a synchronous ``step()`` over it would only be a poll, and suspending a
request or reading its blocks would need RPCs into that process.) We bypass vLLM's output
processor (no detokenization): the engine core's ``EngineCoreOutput.new_token_ids`` become
``TokenDelta``s directly. One engine per process (vLLM keeps process-wide state).

Mapping of the migration hooks onto vLLM (see connector.py for the import path):

| hook             | vLLM                                                                  |
|------------------|-----------------------------------------------------------------------|
| num_full_blocks  | ``request.num_computed_tokens // block_size``                         |
| export_blocks    | ``kv[block_ids]`` of every layer's registered KV tensor, between steps |
| reserve_blocks   | ``block_pool.get_new_blocks(n)``: real blocks out of vLLM's free queue |
| import_blocks    | written straight into those blocks of the KV tensors                   |
| release_blocks   | ``block_pool.free_blocks``                                              |
| suspend / resume | take the request out of ``scheduler.running`` / put it back; its      |
|                  | blocks and the model runner's cached state stay (an unscheduled       |
|                  | running request, as when the token budget runs out)                    |
| export_state     | prompt, outputs so far, ``num_computed_tokens``, the seeded sampler's |
|                  | torch.Generator state                                                  |
| import_request   | a new vLLM request with prompt = prompt + outputs so far, max_tokens  |
|                  | reduced; the connector reports its KV as an external cache hit and    |
|                  | copies the reserved blocks into the blocks vLLM allocates (one local  |
|                  | memcpy); reserved blocks are freed after that step                     |
| remove_request   | ``scheduler.finish_requests(FINISHED_ABORTED)``, no output emitted     |

Limits: an imported request waits in vLLM's queue until its first step (``migration_candidates``
excludes it until then), briefly holding its blocks twice; prefix caching is off (an import
assumes no local hit); a migrated seeded request continues its sampler's exact random stream.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Optional

from ...clock import Clock, SystemClock
from ...protocol.messages import FinishReason, InstanceLoad, Priority, RequestLoad, RequestState, TokenDelta
from ..base import Engine, EngineError, EngineRequest, MigrationCandidate, StepResult
from ..blocks import blocks_for_tokens
from .config import VllmEngineConfig, apply_env, engine_args
from .kvio import KVBlockIO

_FINISH = {0: FinishReason.STOP, 1: FinishReason.LENGTH, 2: FinishReason.ABORT,
           3: FinishReason.ERROR, 4: FinishReason.STOP}


@dataclass
class _Req:
    rid: str
    vid: str  # vLLM's request id: rid + a generation number (a rid may come back)
    prompt: list[int]
    outputs: list[int]  # every output token so far, across migrations
    offset: int  # outputs this vLLM request was created with (its output 0 = our offset)
    sampling: object
    priority: Priority
    frontend_address: str
    arrival_time: float
    running_since: Optional[float] = None
    suspended: bool = False
    reserved: list = field(default_factory=list)  # import: KVCacheBlocks to free after load


def resolve_model(model: str) -> str:
    if model == "tiny":
        from .tiny import build_tiny_llama, default_tiny_dir

        return build_tiny_llama(default_tiny_dir())
    if not os.path.isdir(model):
        raise ValueError(f"vllm engine: {model!r} is not a model directory (or 'tiny')")
    return model


class VllmEngine(Engine):
    kind = "vllm"

    def __init__(self, config: Optional[VllmEngineConfig] = None, clock: Optional[Clock] = None):
        cfg = config or VllmEngineConfig()
        self.config = cfg
        self._clock = clock or SystemClock()
        apply_env(cfg)
        from vllm.distributed.kv_transfer import get_kv_transfer_group
        from vllm.v1.engine.llm_engine import LLMEngine

        path = resolve_model(cfg.model)
        self._llm = LLMEngine.from_engine_args(
            engine_args(cfg, path, f"llumnix-{uuid.uuid4().hex[:8]}"), enable_multiprocessing=False)
        self._client = self._llm.engine_core
        core = self._client.engine_core
        self._sched = core.scheduler
        self._kvm = self._sched.kv_cache_manager
        self._pool = self._kvm.block_pool
        self._conn = self._sched.connector
        self._worker_conn = get_kv_transfer_group()
        self._worker_conn.model_runner = _model_runner(core)
        self._kv = KVBlockIO(self._worker_conn.layers, self._pool.num_gpu_blocks)
        self._tasks = self._llm.get_supported_tasks()
        self.block_size = cfg.block_size
        self.num_blocks = self._pool.num_gpu_blocks - 1  # block 0 is vLLM's null block
        self.max_model_len = self._llm.model_config.max_model_len
        self.max_batch_size = cfg.max_batch_size
        self.model_name = cfg.model_name or cfg.model
        self.eos_token_id = self._llm.input_processor.renderer.tokenizer.eos_token_id \
            if self._llm.input_processor.renderer.tokenizer is not None else None
        self._reqs: dict[str, _Req] = {}
        self._by_vid: dict[str, _Req] = {}
        self._reserved: dict[int, object] = {}  # block id -> KVCacheBlock, for migrations in
        self._gen = itertools.count()

    # --- serving -------------------------------------------------------------------------
    def add_request(self, req: EngineRequest) -> None:
        if req.request_id in self._reqs:
            raise EngineError(f"duplicate request id {req.request_id!r}")
        self._check(req.request_id, req.prompt_token_ids, req.output_token_ids, req.sampling)
        r = _Req(req.request_id, "", list(req.prompt_token_ids), list(req.output_token_ids),
                 len(req.output_token_ids), req.sampling, Priority(req.priority),
                 req.frontend_address, req.arrival_time or time.time())
        self._submit(r)

    def _check(self, rid, prompt, outputs, sampling) -> None:
        if not prompt:
            raise EngineError(f"{rid}: empty prompt")
        n = len(prompt) + len(outputs)
        if n >= self.max_model_len:
            raise EngineError(f"{rid}: {n} tokens >= max_model_len {self.max_model_len}")
        if sampling.max_tokens < 1 or len(outputs) >= sampling.max_tokens:
            raise EngineError(f"{rid}: max_tokens {sampling.max_tokens} with {len(outputs)} "
                              "outputs already")
        if blocks_for_tokens(n + 1, self.block_size) > self.num_blocks:
            raise EngineError(f"{rid}: {n} tokens can never fit {self.num_blocks} blocks")

    def _submit(self, r: _Req, arrival: Optional[float] = None) -> None:
        from vllm.inputs import TokensPrompt

        if not r.vid:
            r.vid = f"{r.rid}#{next(self._gen)}"
        params = _vllm_sampling(r.sampling, len(r.outputs))
        ecr = self._llm.input_processor.process_inputs(
            r.vid, TokensPrompt(prompt_token_ids=r.prompt + r.outputs), params,
            supported_tasks=self._tasks, arrival_time=arrival or r.arrival_time,
            priority=-int(r.priority))  # vLLM: lower value first
        self._client.add_request(ecr)
        self._reqs[r.rid] = r
        self._by_vid[r.vid] = r

    def abort_request(self, request_id: str) -> bool:
        r = self._reqs.get(request_id)
        if r is None:
            return False
        self._drop(r)
        return True

    def _drop(self, r: _Req) -> None:
        from vllm.v1.request import RequestStatus

        del self._reqs[r.rid]
        del self._by_vid[r.vid]
        if r.suspended:
            r.suspended = False
        self._sched.finish_requests(r.vid, RequestStatus.FINISHED_ABORTED)
        if self._conn.cancel(r.vid) is not None:  # never scheduled: its import never ran
            self._free_reserved(r)

    def has_work(self) -> bool:
        """Suspended requests are out of ``scheduler.running``: they do not count."""
        return self._sched.get_num_unfinished_requests() > 0

    def step(self) -> StepResult:
        t0 = time.perf_counter()
        n_decode = sum(1 for q in self._sched.running
                       if q.num_computed_tokens >= q.num_tokens - 1)
        out = self._client.get_output()
        for vid in self._conn.take_loaded():
            r = self._by_vid.get(vid)
            if r is not None:
                self._free_reserved(r)
        deltas = [d for d in map(self._delta, out.outputs) if d is not None]
        n_tokens = sum(len(d.token_ids) for d in deltas)
        return StepResult(deltas, time.perf_counter() - t0, max(0, n_tokens - n_decode),
                          n_decode)

    def _delta(self, o) -> Optional[TokenDelta]:
        r = self._by_vid.get(o.request_id)
        if r is None:  # removed or aborted here: no output
            return None
        start = len(r.outputs)
        r.outputs.extend(o.new_token_ids)
        reason = FinishReason.NONE if o.finish_reason is None else _FINISH[int(o.finish_reason)]
        if r.running_since is None:
            r.running_since = self._clock.now()
        if reason is not FinishReason.NONE:
            del self._reqs[r.rid]
            del self._by_vid[r.vid]
        if not o.new_token_ids and reason is FinishReason.NONE:
            return None
        return TokenDelta(r.rid, start, tuple(o.new_token_ids), reason, len(r.prompt))

    def load(self) -> InstanceLoad:
        reqs = []
        for r in self._reqs.values():
            q = self._vreq(r)
            admitted = q is not None and q.status == _running()
            n_tokens = len(r.prompt) + len(r.outputs)
            blocks = len(self._block_ids(r)) if admitted else blocks_for_tokens(n_tokens, self.block_size)
            reqs.append(RequestLoad(r.rid, blocks, r.priority, n_tokens, admitted, r.suspended))
        return InstanceLoad(
            num_blocks_total=self.num_blocks,
            num_blocks_used=self.num_blocks - self._pool.get_num_free_blocks(),
            num_running=len(self._sched.running),
            num_waiting=len(self._sched.waiting),
            max_batch_size=self.max_batch_size,
            block_size=self.block_size,
            requests=tuple(reqs),
        )

    def num_free_blocks(self) -> int:
        return self._pool.get_num_free_blocks()

    def request_block_ids(self, request_id: str) -> list[int]:
        return self._block_ids(self._get(request_id))

    # --- migration hooks -----------------------------------------------------------------
    def migration_candidates(self) -> list[MigrationCandidate]:
        out = []
        for q in self._sched.running:
            r = self._by_vid.get(q.request_id)
            if r is None or q.num_output_tokens < 1 or q.num_computed_tokens < q.num_tokens - 1:
                continue
            out.append(MigrationCandidate(r.rid, q.num_tokens, len(self._block_ids(r)),
                                          r.priority, r.arrival_time,
                                          r.running_since or r.arrival_time))
        return out

    def num_full_blocks(self, request_id: str) -> int:
        return self._admitted(request_id).num_computed_tokens // self.block_size

    def export_blocks(self, request_id: str, start: int, end: int) -> list:
        ids = self._block_ids(self._get(request_id))
        if not 0 <= start <= end <= len(ids):
            raise EngineError(f"{request_id}: blocks [{start}, {end}) outside its {len(ids)}")
        return [self._kv.read(ids[start:end])]

    def reserve_blocks(self, n: int) -> list[int] | None:
        if n < 0:
            raise EngineError("negative reservation")
        if n > self._pool.get_num_free_blocks():
            return None
        blocks = self._pool.get_new_blocks(n)
        for b in blocks:
            self._reserved[b.block_id] = b
        return [b.block_id for b in blocks]

    def import_blocks(self, block_ids: list[int], frames: list) -> None:
        self._check_reserved(block_ids)
        if not block_ids:
            return
        if len(frames) != 1:
            raise EngineError(f"expected one frame, got {len(frames)}")
        try:
            self._kv.write(block_ids, frames[0])
        except ValueError as exc:
            raise EngineError(str(exc)) from exc

    def release_blocks(self, block_ids: list[int]) -> None:
        self._check_reserved(block_ids)
        self._pool.free_blocks([self._reserved.pop(i) for i in block_ids])

    def _check_reserved(self, block_ids: list[int]) -> None:
        if len(set(block_ids)) != len(block_ids) or not all(i in self._reserved for i in block_ids):
            raise EngineError(f"blocks not reserved (or repeated): {list(block_ids)[:8]}")

    def suspend(self, request_id: str) -> None:
        r = self._get(request_id)
        q = self._vreq(r)
        if r.suspended or q is None or q not in self._sched.running:
            raise EngineError(f"cannot suspend {request_id}: not running")
        self._sched.running.remove(q)
        r.suspended = True

    def resume(self, request_id: str) -> None:
        r = self._get(request_id)
        if not r.suspended:
            raise EngineError(f"cannot resume {request_id}: not suspended")
        self._sched.running.append(self._vreq(r))
        r.suspended = False

    def export_state(self, request_id: str) -> RequestState:
        r = self._get(request_id)
        q = self._admitted(request_id)
        return RequestState(
            request_id=r.rid, frontend_address=r.frontend_address,
            prompt_token_ids=tuple(r.prompt), output_token_ids=tuple(r.outputs),
            sampling=r.sampling, priority=r.priority,
            num_computed_tokens=q.num_computed_tokens, rng_state=self._rng_state(r),
            arrival_time=r.arrival_time)

    def import_request(self, state: RequestState, block_ids: list[int]) -> None:
        rid = state.request_id
        if rid in self._reqs:
            raise EngineError(f"duplicate request id {rid!r}")
        self._check_reserved(block_ids)
        self._check(rid, state.prompt_token_ids, state.output_token_ids, state.sampling)
        n_tokens = len(state.prompt_token_ids) + len(state.output_token_ids)
        nc = state.num_computed_tokens
        need = blocks_for_tokens(nc, self.block_size)
        if not 0 < nc < n_tokens or len(block_ids) < need:
            raise EngineError(f"{rid}: {nc} computed of {n_tokens} tokens in {len(block_ids)} blocks")
        if blocks_for_tokens(n_tokens + 1, self.block_size) > self._pool.get_num_free_blocks():
            raise EngineError(f"{rid}: no room to adopt {n_tokens} tokens "
                              f"({self._pool.get_num_free_blocks()} blocks free)")
        r = _Req(rid, "", list(state.prompt_token_ids), list(state.output_token_ids),
                 len(state.output_token_ids), state.sampling, Priority(state.priority),
                 state.frontend_address, state.arrival_time or time.time(),
                 running_since=self._clock.now())
        r.vid = f"{rid}#{next(self._gen)}"
        self._conn.expect(r.vid, nc, list(block_ids), state.rng_state)
        try:
            self._submit(r)
        except Exception as exc:
            self._conn.cancel(r.vid)
            raise EngineError(f"{rid}: vLLM refused the request: {exc}") from exc
        r.reserved = [self._reserved.pop(i) for i in block_ids]  # freed after the load

    def remove_request(self, request_id: str) -> None:
        self._drop(self._get(request_id))

    def close(self) -> None:
        try:
            self._client.shutdown()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass

    # --- helpers -------------------------------------------------------------------------
    def _get(self, request_id: str) -> _Req:
        r = self._reqs.get(request_id)
        if r is None:
            raise EngineError(f"unknown request {request_id!r}")
        return r

    def _vreq(self, r: _Req):
        return self._sched.requests.get(r.vid)

    def _admitted(self, request_id: str):
        q = self._vreq(self._get(request_id))
        if q is None or q.status != _running():
            raise EngineError(f"{request_id} is waiting: it has no KV blocks")
        return q

    def _block_ids(self, r: _Req) -> list[int]:
        q = self._vreq(r)
        if q is None or q.status != _running():
            return []
        return list(self._kvm.get_block_ids(r.vid)[0])

    def _free_reserved(self, r: _Req) -> None:
        if r.reserved:
            self._pool.free_blocks(r.reserved)
            r.reserved = []

    def _rng_state(self, r: _Req) -> bytes:
        if r.sampling.seed is None or r.sampling.temperature == 0:
            return b""
        st = getattr(self._worker_conn.model_runner, "requests", {}).get(r.vid)
        gen = getattr(st, "generator", None)
        return b"" if gen is None else gen.get_state().numpy().tobytes()

    def allocator_check(self) -> None:
        """Raise AssertionError unless vLLM's used blocks are exactly our requests' tables plus
        pending reservations and imports."""
        owned = list(self._reserved)
        for r in self._reqs.values():
            owned += self._block_ids(r) + [b.block_id for b in r.reserved]
        if len(set(owned)) != len(owned):
            raise AssertionError("a block is owned twice")
        used = self.num_blocks - self._pool.get_num_free_blocks()
        if used != len(owned):
            raise AssertionError(f"leak: {used} blocks used, {len(owned)} owned")


def _running():
    from vllm.v1.request import RequestStatus

    return RequestStatus.RUNNING


def _model_runner(core):
    ex = core.model_executor
    worker = getattr(ex, "driver_worker", None)
    worker = getattr(worker, "worker", worker)
    return getattr(worker, "model_runner", None)


def _vllm_sampling(s, num_outputs: int):
    from vllm import SamplingParams

    return SamplingParams(
        max_tokens=s.max_tokens - num_outputs, temperature=s.temperature, top_p=s.top_p,
        seed=s.seed, stop_token_ids=list(s.stop_token_ids), ignore_eos=s.ignore_eos,
        detokenize=False)
