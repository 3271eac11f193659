"""Every message that crosses a socket, in one module (imports nothing heavy).

Framing (see codec.py): ``[identity…][tag: u16 big-endian][msgpack array of fields][raw frames…]``.
Each message below is a frozen dataclass with a unique ``TAG``; fields are append-only (a new
field goes last, with a default) and enums travel as integers. ``PROTOCOL_VERSION`` is checked
when a worker registers; bump it only for a change that older peers cannot ignore.

Who sends what:

| message            | from → to                       | reply                   |
|--------------------|---------------------------------|-------------------------|
| RegisterWorker     | worker → scheduler              | RegisterAck / ErrorReply|
| LoadReport         | worker → scheduler (heartbeat)  | -                       |
| Deregister         | worker → scheduler              | -                       |
| DispatchQuery      | frontend → scheduler            | DispatchReply / Error   |
| ListInstances      | frontend → scheduler            | InstanceTable           |
| MigrateCommand     | frontend → scheduler → worker   | MigrateCommandReply     |
| ScaleOrder         | scheduler → worker              | -                       |
| GenerateRequest    | frontend → worker               | TokenBatch items        |
| AbortRequest       | frontend → worker               | TokenBatch (ABORT)      |
| TokenBatch         | worker → frontend (PUSH/PULL)   | -                       |
| RequestMoved       | worker → frontend (PUSH/PULL)   | -                       |
| Mig* messages      | worker ↔ worker                 | see worker/migration    |
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Optional

from .schema import Struct

PROTOCOL_VERSION = 1


class Priority(IntEnum):
    NORMAL = 0
    HIGH = 1


class FinishReason(IntEnum):
    NONE = 0  # still running
    STOP = 1  # EOS token, stop token or stop string
    LENGTH = 2  # max_tokens or context length reached
    ABORT = 3  # aborted by the client or an operator
    ERROR = 4  # failed; the delta's ``error`` says why


class ErrorCode(IntEnum):
    MALFORMED = 1
    UNKNOWN_TYPE = 2
    TOO_LARGE = 3
    VERSION_MISMATCH = 4
    UNKNOWN_PEER = 5
    NO_INSTANCE = 6
    NOT_FOUND = 7
    NO_SPACE = 8
    STALE = 9
    INTERNAL = 10
    UNAUTHORIZED = 11
    BAD_REQUEST = 12
    BUSY = 13
    INSTANCE_DEAD = 14
    TIMEOUT = 15


class InstanceState(IntEnum):
    ACTIVE = 1
    DRAINING = 2  # being scaled in: no new dispatch, infinite virtual usage
    DEAD = 3  # missed heartbeats


# ----------------------------------------------------------------------------- nested structs


@dataclass(frozen=True)
class SamplingParams(Struct):
    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: Optional[int] = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False


@dataclass(frozen=True)
class RequestLoad(Struct):
    """One request's share of an instance's KV usage, as the scheduler's formulas need it."""

    request_id: str
    num_blocks: int
    priority: Priority = Priority.NORMAL
    num_tokens: int = 0
    running: bool = True  # False: waiting in the queue (num_blocks = its demand)
    migrating: bool = False


@dataclass(frozen=True)
class InstanceLoad(Struct):
    num_blocks_total: int
    num_blocks_used: int
    num_running: int
    num_waiting: int
    max_batch_size: int = 256
    block_size: int = 16
    requests: tuple[RequestLoad, ...] = ()
    draining: bool = False
    num_migrating_out: int = 0
    num_migrating_in: int = 0


@dataclass(frozen=True)
class InstanceInfo(Struct):
    instance_id: str
    address: str
    state: InstanceState
    load: InstanceLoad
    report_age_s: float = 0.0
    model: str = ""
    max_model_len: int = 0


@dataclass(frozen=True)
class TokenDelta(Struct):
    """New tokens of one request in one engine step. ``start_index`` is the output index of the
    first token here, so a receiver detects duplicates and gaps (e.g. across a migration)."""

    request_id: str
    start_index: int
    token_ids: tuple[int, ...] = ()
    finish_reason: FinishReason = FinishReason.NONE
    num_prompt_tokens: int = 0
    error: str = ""
    error_code: int = 0


@dataclass(frozen=True)
class RequestState(Struct):
    """Everything a request needs to continue on another instance (besides its KV blocks)."""

    request_id: str
    frontend_address: str
    prompt_token_ids: tuple[int, ...]
    output_token_ids: tuple[int, ...]
    sampling: SamplingParams
    priority: Priority = Priority.NORMAL
    num_computed_tokens: int = 0
    rng_state: bytes = b""
    arrival_time: float = 0.0
    engine_extra: bytes = b""  # engine-specific, msgpack-encoded by the engine


# ----------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Message(Struct):
    TAG: ClassVar[int] = 0


@dataclass(frozen=True)
class ErrorReply(Message):
    TAG: ClassVar[int] = 1
    code: ErrorCode
    message: str
    request_id: str = ""
    ref_tag: int = 0  # TAG of the message this answers
    query_id: int = 0


@dataclass(frozen=True)
class RegisterWorker(Message):
    TAG: ClassVar[int] = 2
    protocol_version: int
    instance_id: str
    address: str
    engine: str
    model: str
    block_size: int
    num_blocks: int
    max_model_len: int
    max_batch_size: int = 256
    pid: int = 0


@dataclass(frozen=True)
class RegisterAck(Message):
    TAG: ClassVar[int] = 3
    protocol_version: int
    instance_id: str
    report_period_s: float = 0.05
    scheduler_epoch: str = ""


@dataclass(frozen=True)
class LoadReport(Message):
    TAG: ClassVar[int] = 4
    instance_id: str
    seq: int
    load: InstanceLoad


@dataclass(frozen=True)
class Deregister(Message):
    TAG: ClassVar[int] = 5
    instance_id: str
    reason: str = ""


@dataclass(frozen=True)
class DispatchQuery(Message):
    TAG: ClassVar[int] = 6
    query_id: int
    request_id: str
    num_prompt_tokens: int
    priority: Priority = Priority.NORMAL
    exclude: tuple[str, ...] = ()  # instances not to choose (e.g. one that just failed)
    # a dispatch ticket this frontend was given (DispatchReply.ticket_id) and did not use: the
    # scheduler stops counting it as queued on its instance (0: none)
    release_ticket: int = 0


@dataclass(frozen=True)
class DispatchReply(Message):
    TAG: ClassVar[int] = 7
    query_id: int
    request_id: str
    instance_id: str
    address: str
    reason: str = ""
    # nonzero for a dispatch ticket (a query for request id ""): the frontend names it in a
    # later DispatchQuery.release_ticket if no request used it
    ticket_id: int = 0


@dataclass(frozen=True)
class ListInstances(Message):
    TAG: ClassVar[int] = 8
    query_id: int


@dataclass(frozen=True)
class InstanceTable(Message):
    TAG: ClassVar[int] = 9
    query_id: int
    instances: tuple[InstanceInfo, ...]
    scheduler_epoch: str = ""
    dispatch_policy: str = ""


@dataclass(frozen=True)
class GenerateRequest(Message):
    TAG: ClassVar[int] = 10
    request_id: str
    frontend_address: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams
    priority: Priority = Priority.NORMAL
    output_token_ids: tuple[int, ...] = ()  # already streamed (resume after a failure)
    arrival_time: float = 0.0


@dataclass(frozen=True)
class AbortRequest(Message):
    TAG: ClassVar[int] = 11
    request_id: str
    reason: str = ""


@dataclass(frozen=True)
class TokenBatch(Message):
    TAG: ClassVar[int] = 12
    instance_id: str
    step: int
    items: tuple[TokenDelta, ...]


@dataclass(frozen=True)
class MigrateCommand(Message):
    """Order a worker (the source) to migrate requests to a destination. Sent by an operator
    (frontend admin endpoint, CLI) to the scheduler, which forwards it to the source worker; or
    by the scheduler's pairing loop. Empty ``request_ids``: the source chooses ``num_requests``."""

    TAG: ClassVar[int] = 13
    command_id: int
    source_id: str
    destination_id: str
    destination_address: str = ""
    num_requests: int = 1
    request_ids: tuple[str, ...] = ()
    reason: str = ""
    # when the source chooses: only requests of at most this many KV blocks (the room the
    # scheduler saw on the destination); 0: no limit
    max_blocks: int = 0


@dataclass(frozen=True)
class MigrateCommandReply(Message):
    TAG: ClassVar[int] = 14
    command_id: int
    accepted: bool
    request_ids: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class ScaleOrder(Message):
    """Scheduler → worker: enter or leave draining (scale-in) or stop."""

    TAG: ClassVar[int] = 15
    instance_id: str
    draining: bool
    stop_when_empty: bool = False


@dataclass(frozen=True)
class FrontendGone(Message):
    """Frontend → worker on clean shutdown: abort all of its requests."""

    TAG: ClassVar[int] = 16
    frontend_address: str


@dataclass(frozen=True)
class RequestMoved(Message):
    """Source worker → frontend (token PUSH) when a migration committed: ``instance_id`` now
    owns the request. Without it a destination that dies before its first token reaches the
    frontend would leave the frontend believing the source still holds the request."""

    TAG: ClassVar[int] = 17
    request_id: str
    instance_id: str
    start_index: int = 0  # output tokens the request had when it moved


# --- migration (worker ↔ worker); see worker/migration for the state machines ---------------


@dataclass(frozen=True)
class MigPreAlloc(Message):
    """Stage ``stage`` of a migration: reserve ``num_blocks`` blocks; the raw frames that follow
    carry their contents (blocks ``block_start`` … of the request, in order)."""

    TAG: ClassVar[int] = 20
    migration_id: int
    request_id: str
    source_id: str
    stage: int
    block_start: int
    num_blocks: int
    num_tokens: int = 0


@dataclass(frozen=True)
class MigAck(Message):
    TAG: ClassVar[int] = 21
    migration_id: int
    request_id: str
    stage: int
    block_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class MigAbort(Message):
    TAG: ClassVar[int] = 22
    migration_id: int
    request_id: str
    code: ErrorCode
    reason: str = ""


@dataclass(frozen=True)
class MigCommit(Message):
    TAG: ClassVar[int] = 23
    migration_id: int
    request_id: str
    source_id: str
    state: RequestState


@dataclass(frozen=True)
class MigCommitted(Message):
    TAG: ClassVar[int] = 24
    migration_id: int
    request_id: str
    instance_id: str


ALL_MESSAGES: tuple[type[Message], ...] = (
    ErrorReply,
    RegisterWorker,
    RegisterAck,
    LoadReport,
    Deregister,
    DispatchQuery,
    DispatchReply,
    ListInstances,
    InstanceTable,
    GenerateRequest,
    AbortRequest,
    TokenBatch,
    MigrateCommand,
    MigrateCommandReply,
    ScaleOrder,
    FrontendGone,
    RequestMoved,
    MigPreAlloc,
    MigAck,
    MigAbort,
    MigCommit,
    MigCommitted,
)

BY_TAG: dict[int, type[Message]] = {m.TAG: m for m in ALL_MESSAGES}
assert len(BY_TAG) == len(ALL_MESSAGES), "duplicate message TAG"
