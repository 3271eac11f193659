"""The ``sim`` engine's migration hooks (engine/base.py's export/import, suspend/resume), mixed
into ``SimEngine``: its KV pool ``_kv`` (``[num_blocks, block_size]`` int32, the token id
computed at each slot, -1 empty) travels as one int32 frame per stage; ``import_request``
checks that the imported blocks hold exactly the request's computed tokens, so a migration
that loses or misplaces a block fails loudly instead of producing other tokens."""

from __future__ import annotations

import numpy as np

from ...protocol.messages import RequestState
from ..base import EngineError, MigrationCandidate
from ..blocks import blocks_for_tokens
from .requests import _Status


class SimMigrationHooks:
    """Reads and updates ``SimEngine``'s state: ``_requests``, ``_running``, ``_suspended``,
    ``_reserved``, ``_alloc``, ``_kv``, ``_clock``; calls ``_admitted``, ``_get``, ``_allocate``,
    ``_new_req`` and ``_drop``."""

    def migration_candidates(self) -> list[MigrationCandidate]:
        return [
            MigrationCandidate(r.request_id, len(r.tokens), len(r.blocks), r.priority,
                               r.arrival_time, r.running_since)
            for r in self._running.values() if r.in_decode
        ]

    def num_full_blocks(self, request_id: str) -> int:
        return self._admitted(request_id).num_computed // self.block_size

    def export_blocks(self, request_id: str, start: int, end: int) -> list:
        r = self._admitted(request_id)
        if not 0 <= start <= end <= len(r.blocks):
            raise EngineError(f"{request_id}: blocks [{start}, {end}) outside its {len(r.blocks)}")
        return [self._kv[r.blocks[start:end]]]  # fancy indexing: a contiguous copy

    def reserve_blocks(self, n: int) -> list[int] | None:
        if n < 0:
            raise EngineError("negative reservation")
        if not self._alloc.can_allocate(n):
            return None
        ids = self._allocate(n)
        self._reserved.update(ids)
        return ids

    def import_blocks(self, block_ids: list[int], frames: list) -> None:
        self._check_reserved(block_ids)
        if not block_ids:
            return
        if len(frames) != 1:
            raise EngineError(f"expected one frame, got {len(frames)}")
        self._kv[block_ids] = self._frame_array(frames[0], len(block_ids))

    def _frame_array(self, frame, n: int) -> np.ndarray:
        shape = (n, self.block_size)
        if isinstance(frame, np.ndarray):
            if frame.dtype != np.int32 or frame.shape != shape:
                raise EngineError(f"frame {frame.dtype}{frame.shape}, expected int32{shape}")
            return frame
        try:
            buf = memoryview(frame).cast("B")
        except TypeError as exc:
            raise EngineError(f"frame is not a buffer: {type(frame).__name__}") from exc
        if buf.nbytes != n * self.block_size * 4:
            raise EngineError(f"frame of {buf.nbytes} bytes, expected {n * self.block_size * 4}")
        return np.frombuffer(buf, dtype=np.int32).reshape(shape)

    def release_blocks(self, block_ids: list[int]) -> None:
        self._check_reserved(block_ids)
        self._reserved.difference_update(block_ids)
        self._alloc.free(block_ids)

    def _check_reserved(self, block_ids: list[int]) -> None:
        if len(set(block_ids)) != len(block_ids) or not self._reserved.issuperset(block_ids):
            raise EngineError(f"blocks not reserved (or repeated): {list(block_ids)[:8]}")

    def suspend(self, request_id: str) -> None:
        r = self._get(request_id)
        if r.status is not _Status.RUNNING:
            raise EngineError(f"cannot suspend {request_id}: {r.status.value}")
        del self._running[request_id]
        r.status = _Status.SUSPENDED
        self._suspended[request_id] = r

    def resume(self, request_id: str) -> None:
        r = self._get(request_id)
        if r.status is not _Status.SUSPENDED:
            raise EngineError(f"cannot resume {request_id}: {r.status.value}")
        del self._suspended[request_id]
        r.status = _Status.RUNNING
        self._running[request_id] = r

    def export_state(self, request_id: str) -> RequestState:
        r = self._admitted(request_id)
        return RequestState(
            request_id=r.request_id,
            frontend_address=r.frontend_address,
            prompt_token_ids=tuple(r.tokens[: r.num_prompt]),
            output_token_ids=tuple(r.tokens[r.num_prompt:]),
            sampling=r.sampling,
            priority=r.priority,
            num_computed_tokens=r.num_computed,
            arrival_time=r.arrival_time,
        )

    def import_request(self, state: RequestState, block_ids: list[int]) -> None:
        rid = state.request_id
        if rid in self._requests:
            raise EngineError(f"duplicate request id {rid!r}")
        self._check_reserved(block_ids)
        r = self._new_req(rid, state.prompt_token_ids, state.output_token_ids, state.sampling,
                          state.priority, state.frontend_address, state.arrival_time)
        nc = state.num_computed_tokens
        if not 0 <= nc < len(r.tokens) or len(block_ids) < blocks_for_tokens(nc, self.block_size):
            raise EngineError(f"{rid}: {nc} computed of {len(r.tokens)} tokens in {len(block_ids)} blocks")
        expected = np.full(len(block_ids) * self.block_size, -1, dtype=np.int32)
        expected[:nc] = r.tokens[:nc]
        if not np.array_equal(self._kv[block_ids].reshape(-1), expected):
            raise EngineError(f"{rid}: imported KV blocks do not match its tokens")
        self._reserved.difference_update(block_ids)
        r.blocks = list(block_ids)
        r.num_computed = nc
        r.in_decode = r.num_prompt < len(r.tokens) and nc == len(r.tokens) - 1
        r.status = _Status.RUNNING
        r.running_since = self._clock.now()
        self._requests[rid] = r
        self._running[rid] = r
