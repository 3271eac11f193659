"""Our vLLM KV connector: how a migrated request's KV enters a vLLM v1 engine.

Loaded by vLLM itself from ``kv_transfer_config`` (``kv_connector="LlumnixMigrationConnector"``,
``kv_connector_module_path="llumnix_zmq.engine.vllm.connector"``). vLLM builds two instances in
our one process (the engine runs in-process, see engine.py): a SCHEDULER-role one inside the
scheduler and a WORKER-role one inside the model runner. ``VllmEngine`` talks to both directly.

Import of a migrated request (the "external cache hit" emulation)::

    VllmEngine.import_request                      scheduler connector          worker connector
    ───────────────────────────                    ───────────────────          ────────────────
    KV already written into reserved blocks R
    expect(vid, n_computed, R, rng) ────────────>  pending[vid]
    add vLLM request (prompt + outputs so far)
                              next step(): schedule
                                           get_num_new_matched_tokens -> (n_computed, sync)
                                           allocate blocks D for the request
                                           update_state_after_alloc: load R[:k] -> D[:k]
                                           build_connector_meta ──────────────> start_load_kv:
                                                                               kv[D] = kv[R]
                                                                               set rng state
                                                                               (forward runs)
    after the step: free R (``take_loaded``)

vLLM cannot adopt pre-reserved blocks into a request's block table, so the imported KV is
copied once more, block to block inside the same KV tensors (a memcpy; the request briefly holds
twice its blocks). Loads are synchronous (``load_kv_async=False``): they finish before the
forward pass of the step that first schedules the request. The source side needs no hook: the
engine reads blocks straight from the registered KV tensors between steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

if TYPE_CHECKING:
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.request import Request


@dataclass
class _Pending:
    num_tokens: int  # tokens whose KV the reserved blocks hold
    src_blocks: list[int]  # reserved blocks, in block-table order
    rng_state: bytes = b""


@dataclass
class _Load:
    request_id: str
    src_blocks: list[int]
    dst_blocks: list[int]
    rng_state: bytes = b""


@dataclass
class MigrationConnectorMetadata(KVConnectorMetadata):
    loads: list[_Load] = field(default_factory=list)


class LlumnixMigrationConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config, role: KVConnectorRole, kv_cache_config=None):
        super().__init__(vllm_config, role, kv_cache_config)
        self.block_size = vllm_config.cache_config.block_size
        # scheduler side
        self._pending: dict[str, _Pending] = {}
        self._loads: list[_Load] = []
        self._loaded: list[str] = []
        # worker side
        self.kv_caches: dict[str, torch.Tensor] = {}
        self.layers: list[torch.Tensor] = []  # one per distinct storage, layer order
        self.model_runner: Any = None  # set by VllmEngine (rng state of seeded requests)

    # ------------------------------------------------------------------ scheduler side
    def expect(self, request_id: str, num_tokens: int, src_blocks: list[int],
               rng_state: bytes = b"") -> None:
        """The engine will add ``request_id``; its first ``num_tokens`` tokens' KV is in
        ``src_blocks`` (reserved, already written)."""
        self._pending[request_id] = _Pending(num_tokens, list(src_blocks), rng_state)

    def cancel(self, request_id: str) -> Optional[list[int]]:
        """Forget a pending import (request aborted before it was scheduled)."""
        p = self._pending.pop(request_id, None)
        return None if p is None else p.src_blocks

    def is_pending(self, request_id: str) -> bool:
        return request_id in self._pending

    def take_loaded(self) -> list[str]:
        """Requests whose load ran in the last step (their reserved blocks can go)."""
        done, self._loaded = self._loaded, []
        return done

    def get_num_new_matched_tokens(self, request: "Request", num_computed_tokens: int):
        p = self._pending.get(request.request_id)
        if p is None:
            return 0, False
        return max(0, p.num_tokens - num_computed_tokens), False

    def update_state_after_alloc(self, request: "Request", blocks: "KVCacheBlocks",
                                 num_external_tokens: int):
        p = self._pending.get(request.request_id)
        if p is None or num_external_tokens == 0:
            return
        n = -(-p.num_tokens // self.block_size)
        dst = list(blocks.get_block_ids()[0][:n])
        if len(dst) != n or len(p.src_blocks) < n:
            raise RuntimeError(f"{request.request_id}: {len(dst)} blocks allocated, "
                               f"{len(p.src_blocks)} imported, {n} needed")
        self._loads.append(_Load(request.request_id, p.src_blocks[:n], dst, p.rng_state))

    def build_connector_meta(self, scheduler_output: "SchedulerOutput") -> KVConnectorMetadata:
        meta = MigrationConnectorMetadata(self._loads)
        for load in self._loads:
            self._pending.pop(load.request_id, None)
            self._loaded.append(load.request_id)
        self._loads = []
        return meta

    def request_finished(self, request: "Request", block_ids: list[int]):
        return False, None

    # ------------------------------------------------------------------ worker side
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]):
        self.kv_caches = dict(kv_caches)
        seen: set[int] = set()
        self.layers = []
        for t in kv_caches.values():
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                self.layers.append(t)

    def start_load_kv(self, forward_context, **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        if not isinstance(meta, MigrationConnectorMetadata):
            return
        for load in meta.loads:
            src = torch.tensor(load.src_blocks, dtype=torch.long)
            dst = torch.tensor(load.dst_blocks, dtype=torch.long)
            for t in self.layers:
                t.index_copy_(0, dst, t.index_select(0, src))
            if load.rng_state:
                self._set_rng(load.request_id, load.rng_state)

    def _set_rng(self, request_id: str, state: bytes) -> None:
        st = getattr(self.model_runner, "requests", {}).get(request_id)
        gen = getattr(st, "generator", None)
        if gen is not None:
            gen.set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))

    def wait_for_layer_load(self, layer_name: str) -> None:
        return

    def save_kv_layer(self, layer_name: str, kv_layer, attn_metadata, **kwargs: Any) -> None:
        return

    def wait_for_save(self):
        return
