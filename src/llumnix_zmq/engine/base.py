"""The engine interface: what a worker (llumlet) drives, implemented by ``sim``, ``torch`` and
``vllm``. Everything backend-specific stays behind it.

Life of a request inside an engine::

    add_request ──> WAITING ──(admitted: blocks allocated, prefill)──> RUNNING ──> finished
                      ^   │                                             │  ^
                      │   └──── abort_request (any state) ──> freed      │  │ resume
                      └──(preempted: blocks freed, recompute later)──────┘  │
                                                               suspend ──> SUSPENDED

``step()`` runs one iteration of continuous batching: it admits waiting requests under the token
budget and the free blocks, runs one forward pass (prefill chunks and decodes together), and
returns each request's *new* tokens as ``TokenDelta``s (``start_index`` = output index of the
first new token). A finished or aborted request has already released its blocks when its final
delta is returned.

Priorities: HIGH requests are admitted before NORMAL ones, and a NORMAL request is preempted
first when a running request needs a block. Priority preemption (``sim`` and ``torch``, option
``priority_preemption``, on by default): a HIGH request at the head of the queue whose blocks do
not fit preempts NORMAL running requests, last admitted first, when that makes room for it. The
``vllm`` adapter has vLLM's own priority scheduling, which preempts only for running requests.

Migration hooks (used by worker/migration; the engine never talks to the network):

    source                                   destination
    ------                                   -----------
    num_full_blocks(rid) -> k                reserve_blocks(n) -> ids | None
    export_blocks(rid, a, b) -> frames  ───> import_blocks(ids, frames)
    (or export_blocks_into(rid, a, b, buf): the same, gathered into a reused send buffer;
     or export_block_views(rid, a, b, min): views of the cache itself, no copy)
    suspend(rid)  (stops decoding; keeps blocks)
    export_state(rid) -> RequestState   ───> import_request(state, all_ids)  (RUNNING, decodes on)
    remove_request(rid) (frees, no output)   release_blocks(ids)  (on abort: undo the reservation)
    resume(rid)   (on abort: continue here)

``num_full_blocks`` is the pre-copy frontier: blocks [0, k) hold KV that will not change while
the request keeps decoding (every block but the one being filled). Frames from
``export_blocks`` are opaque buffers (bytes, memoryview or numpy arrays) that only the same
engine kind with the same model and block size can import.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from ..protocol.messages import InstanceLoad, Priority, RequestState, SamplingParams, TokenDelta


@dataclass
class EngineRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    priority: Priority = Priority.NORMAL
    frontend_address: str = ""
    output_token_ids: list[int] = field(default_factory=list)  # resume: already produced
    arrival_time: float = 0.0


@dataclass
class StepResult:
    deltas: list[TokenDelta]
    duration_s: float  # modelled (sim) or measured (torch) compute time of this step
    num_prefill_tokens: int = 0
    num_decode_tokens: int = 0
    num_preempted: int = 0


@dataclass(frozen=True)
class MigrationCandidate:
    """A running request the source could migrate, with what selection policies compare."""

    request_id: str
    num_tokens: int
    num_blocks: int
    priority: Priority
    arrival_time: float
    running_since: float  # engine clock when it was first admitted


class EngineError(Exception):
    """A request-level failure (unknown id, wrong state, bad input)."""


class Engine(abc.ABC):
    kind: str = "abstract"
    block_size: int
    num_blocks: int
    max_model_len: int
    max_batch_size: int
    model_name: str

    # --- serving -------------------------------------------------------------------------
    @abc.abstractmethod
    def add_request(self, req: EngineRequest) -> None:
        """Queue a request. Raises EngineError on a duplicate id or a prompt that can never fit."""

    @abc.abstractmethod
    def abort_request(self, request_id: str) -> bool:
        """Drop a request in any state and free its blocks now; False if unknown."""

    @abc.abstractmethod
    def has_work(self) -> bool:
        """True while any request is waiting or running (suspended ones do not count)."""

    @abc.abstractmethod
    def step(self) -> StepResult:
        """One iteration of continuous batching."""

    @abc.abstractmethod
    def load(self) -> InstanceLoad:
        """What the global scheduler needs: blocks used/total, running, waiting, per request."""

    @abc.abstractmethod
    def num_free_blocks(self) -> int: ...

    @abc.abstractmethod
    def request_block_ids(self, request_id: str) -> list[int]:
        """The request's block table (empty while waiting)."""

    def has_request(self, request_id: str) -> bool:
        try:
            self.request_block_ids(request_id)
            return True
        except EngineError:
            return False

    # --- migration hooks -----------------------------------------------------------------
    @abc.abstractmethod
    def migration_candidates(self) -> list[MigrationCandidate]:
        """Running (admitted, not suspended, prefill done) requests."""

    @abc.abstractmethod
    def num_full_blocks(self, request_id: str) -> int: ...

    @abc.abstractmethod
    def export_blocks(self, request_id: str, start: int, end: int) -> list:
        """Contents of blocks [start, end) of the request's block table, as buffers."""

    def export_blocks_into(self, request_id: str, start: int, end: int, buffer) -> list:
        """``export_blocks``, gathering into ``buffer`` (a uint8 numpy array) where the engine
        can, so the data plane reuses its send buffers; the frames may then be views of it.
        The caller lends ``buffer`` until the destination has acknowledged the frames. By
        default the buffer is not used."""
        return self.export_blocks(request_id, start, end)

    def export_block_views(self, request_id: str, start: int, end: int,
                           min_frame_bytes: int) -> list | None:
        """``export_blocks`` without a copy: frames that are views of the engine's own cache
        (each at least ``min_frame_bytes``), or None where the engine cannot (the default).
        They are read when the transport sends them, so the caller must keep the blocks
        allocated and unchanged until the destination has acknowledged them (full blocks of a
        live or suspended request are: KV is append-only)."""
        return None

    @abc.abstractmethod
    def reserve_blocks(self, n: int) -> list[int] | None:
        """Allocate n blocks for an incoming migration; None if they are not free."""

    @abc.abstractmethod
    def import_blocks(self, block_ids: list[int], frames: list) -> None:
        """Write exported contents into reserved blocks (same order)."""

    @abc.abstractmethod
    def release_blocks(self, block_ids: list[int]) -> None:
        """Free reserved blocks that were never committed."""

    @abc.abstractmethod
    def suspend(self, request_id: str) -> None:
        """Stop scheduling the request; its blocks stay."""

    @abc.abstractmethod
    def resume(self, request_id: str) -> None: ...

    @abc.abstractmethod
    def export_state(self, request_id: str) -> RequestState: ...

    @abc.abstractmethod
    def import_request(self, state: RequestState, block_ids: list[int]) -> None:
        """Adopt a migrated request (blocks already imported) as RUNNING."""

    @abc.abstractmethod
    def remove_request(self, request_id: str) -> None:
        """Drop a migrated-away request and free its blocks, emitting no output."""

    def close(self) -> None:
        """Release resources (threads, devices)."""
