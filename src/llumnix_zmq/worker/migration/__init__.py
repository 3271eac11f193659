"""Live migration of running requests (their KV cache) between workers: staged pre-copy.

    source worker                                    destination worker
    -------------                                    ------------------
    MigrateCommand ─> choose (select_requests)
    round 0..: export full blocks ── PRE_ALLOC ───>  reserve + import ── ACK(block ids)
               (request keeps decoding)  <──────────────────────────────┘   (or ABORT)
    last round: suspend, export the rest
               ── PRE_ALLOC (final) ─┐
               ── COMMIT(state) ─────┴──────────>  import_request: RUNNING, streams to the
                                                   request's frontend from the next step
               <──────────────────── COMMITTED ──
    remove_request (free, no output)

- states.py: the two state machines (enum + transition table each).
- source.py: one outgoing migration; the COMMIT-race rule table.
- destination.py: incoming sessions; the answer table (idempotency, stale ids, unknown peers).
- coordinator.py: the object WorkerService holds as ``migration``; hooks and their locking.
- dataplane.py: ZeroMQ multipart data plane (DEALER per peer → the peer's ROUTER).
- nccl.py: optional GPU-to-GPU block transfer with cupy NCCL (imported lazily).
- testing.py: in-memory network and worker stand-in for unit tests (FakeClock, no sockets).

Failure semantics (each leaves the request running exactly once and no block leaked):

| what happens                          | outcome                                             |
|---------------------------------------|-----------------------------------------------------|
| destination refuses (no space, busy,  | ABORT: the source keeps / resumes the request; the  |
| draining, duplicate id)               | destination releases what it reserved               |
| destination dies                      | ACK / COMMIT timeout: the source resumes            |
| source dies                           | the destination releases its reservation after      |
|                                       | ``migration_timeout_s`` of silence                  |
| request finishes / is aborted / is    | the source tells ABORT; the destination releases    |
| preempted / its client disconnects    | (during COMMIT: the abort follows the request to    |
| during pre-copy or the final stage    | the destination if it committed)                    |
| COMMITTED lost                        | COMMIT resent with the same ids: answered from the  |
|                                       | destination's tombstone (idempotent)                |
| late / duplicated / stale message, or | answered from the tombstone, or refused (ABORT      |
| one from another peer                 | STALE, ErrorReply UNKNOWN_PEER); never applied      |

Queued requests (named explicitly, not yet running) move without KV: the source takes them out
of its queue (no output), sends COMMIT with their state (num_computed_tokens = 0) and the
destination queues them with ``add_request``; the same COMMIT idempotency applies, and on
ABORT the source queues the request again (at the back of its queue).
"""

from .coordinator import MigrationConfig, MigrationCoordinator
from .states import DstState, SrcState

__all__ = ["DstState", "MigrationConfig", "MigrationCoordinator", "SrcState"]
