"""Fuzz the real services' message handlers over real sockets: a SchedulerService and a
WorkerService (sim engine) run in-process on one event loop (its own thread), talking over
``ipc://``; a DEALER per service sends random, truncated, bit-flipped and type-confused frames
and well-typed messages with adversarial values to its ROUTER.

Each message is followed by a sentinel the service answers, so the replies to one message are
exactly those received before the sentinel's answer:

| input                              | required answer                                        |
|------------------------------------|--------------------------------------------------------|
| undecodable                        | the codec's ErrorReply (MALFORMED / UNKNOWN_TYPE / ...) |
| a type the service has no handler  | ErrorReply UNKNOWN_TYPE                                 |
| a handled type                     | that handler's typed answer (table in check_*), never   |
|                                    | ErrorReply INTERNAL (the router's net for handler bugs) |

After each example: both services are alive (their tasks running, a ListInstances gets an
InstanceTable), a valid GenerateRequest streams the exact sim tokens to our PULL socket, and the
worker's block accounting is whole (allocator_check; every block free once our requests finish
and the bogus ones are aborted).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import itertools
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
import zmq
import zmq.asyncio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from llumnix_zmq.config import SchedulerConfig, WorkerConfig
from llumnix_zmq.engine.sim import SimConfig, SimEngine, pseudo_tokens
from llumnix_zmq.protocol import messages as m
from llumnix_zmq.protocol.codec import DecodeError, decode, encode
from llumnix_zmq.protocol.messages import ErrorCode, ErrorReply, FinishReason
from llumnix_zmq.scheduler.service import SchedulerService
from llumnix_zmq.transport.rpc import reply_key
from llumnix_zmq.transport.sockets import make_socket
from llumnix_zmq.worker.service import WorkerService


def _load_codec_strategies():
    path = Path(__file__).resolve().parents[1] / "protocol" / "test_codec_fuzz.py"
    spec = importlib.util.spec_from_file_location("_codec_fuzz_strategies", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_codec = _load_codec_strategies()
any_frames, for_struct, messages = _codec.any_frames, _codec.for_struct, _codec.messages

pytestmark = pytest.mark.timeout(240)
FUZZ = settings(max_examples=int(os.environ.get("LLUMNIX_FUZZ_EXAMPLES", 150)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

NUM_BLOCKS, BLOCK_SIZE = 32, 16
MAX_MODEL_LEN = NUM_BLOCKS * BLOCK_SIZE  # the sim clamps max_model_len to its pool
VOCAB = SimConfig().vocab_size
WORKER_ID = "w0"
SCHEDULER_HANDLED = (m.RegisterWorker, m.LoadReport, m.Deregister, m.DispatchQuery,
                     m.ListInstances, m.MigrateCommand, m.MigrateCommandReply)
WORKER_HANDLED = (m.GenerateRequest, m.AbortRequest, m.FrontendGone, m.MigPreAlloc,
                  m.MigCommit, m.MigAbort)


# --------------------------------------------------------------------------- the mesh


class Mesh:
    """A scheduler and a worker on an event loop in a background thread, plus our sockets:
    ``to_scheduler`` / ``to_worker`` (DEALERs) and ``tokens`` (PULL, the "frontend")."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="lzfuzz")  # short: ipc paths have a length cap
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sentinels = itertools.count(0x5E_0000_0000)
        self.valid_ids = itertools.count()
        self.call(self._start(), 30)

    def call(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        d = self.dir
        self.ctx = zmq.asyncio.Context()
        self.scheduler_address = f"ipc://{d}/scheduler.sock"
        self.scheduler = SchedulerService(SchedulerConfig(
            bind=self.scheduler_address, heartbeat_timeout_s=3.0, pairing_period_s=0.1),
            self.ctx)
        self.scheduler_stop = asyncio.Event()
        self.scheduler_task = asyncio.create_task(self.scheduler.run(self.scheduler_stop))
        self.engine = SimEngine(SimConfig(num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE))
        cfg = WorkerConfig(scheduler=self.scheduler_address, bind=f"ipc://{d}/{WORKER_ID}.sock",
                           instance_id=WORKER_ID, time_scale=0.0, num_blocks=NUM_BLOCKS,
                           block_size=BLOCK_SIZE, migration_timeout_s=0.5)
        self.worker = WorkerService(cfg, self.ctx, self.engine)
        self.worker_stop = asyncio.Event()
        self.worker_task = asyncio.create_task(self.worker.run(self.worker_stop))
        self.frontend = f"ipc://{d}/frontend.sock"
        self.tokens = make_socket(self.ctx, zmq.PULL, self.frontend, bind=True)
        self.to_scheduler = make_socket(self.ctx, zmq.DEALER, self.scheduler_address,
                                        bind=False, identity=b"fuzz-scheduler-client")
        self.to_worker = make_socket(self.ctx, zmq.DEALER, self.worker.address, bind=False,
                                     identity=b"fuzz-worker-client")
        await asyncio.wait_for(self.worker.registered.wait(), 10)

    async def _stop(self) -> None:
        self.worker_stop.set()
        await asyncio.wait_for(self.worker_task, 10)
        self.scheduler_stop.set()
        await asyncio.wait_for(self.scheduler_task, 10)
        for sock in (self.tokens, self.to_scheduler, self.to_worker):
            sock.close(linger=0)
        self.ctx.term()

    def close(self) -> None:
        try:
            self.call(self._stop(), 30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            shutil.rmtree(self.dir, ignore_errors=True)

    def alive(self) -> bool:
        return not (self.worker_stop.is_set() or self.scheduler_stop.is_set()
                    or self.worker_task.done() or self.scheduler_task.done())

    # --- exchanges (run on the loop) -----------------------------------------------------
    async def exchange(self, sock, frames: list, sentinel: m.Message, is_answer) -> list:
        """Send ``frames`` then ``sentinel``; every message received before the sentinel's
        answer (each must itself decode)."""
        await sock.send_multipart(frames or [b""], copy=True)
        await sock.send_multipart(encode(sentinel))
        out = []
        while True:
            got = await asyncio.wait_for(sock.recv_multipart(), 10)
            msg, _ = decode(got)
            if is_answer(msg):
                return out
            out.append(msg)

    async def to_scheduler_exchange(self, frames) -> list:
        qid = next(self.sentinels)
        return await self.exchange(self.to_scheduler, frames, m.ListInstances(qid),
                                   lambda r: isinstance(r, m.InstanceTable) and r.query_id == qid)

    async def to_worker_exchange(self, frames) -> list:
        # the worker has no handler for ListInstances: its UNKNOWN_TYPE answer is the sentinel
        qid = next(self.sentinels)
        return await self.exchange(self.to_worker, frames, m.ListInstances(qid),
                                   lambda r: isinstance(r, ErrorReply) and r.query_id == qid
                                   and r.code is ErrorCode.UNKNOWN_TYPE)

    async def deltas_until(self, request_ids: set[str], timeout: float = 10) -> dict:
        """TokenDeltas for ``request_ids`` until each has finished (others are discarded)."""
        got: dict[str, list[m.TokenDelta]] = {rid: [] for rid in request_ids}
        pending = set(request_ids)
        deadline = time.monotonic() + timeout
        while pending:
            left = deadline - time.monotonic()
            assert left > 0, f"no final delta for {sorted(pending)[:4]}"
            frames = await asyncio.wait_for(self.tokens.recv_multipart(), left)
            batch, _ = decode(frames)
            assert isinstance(batch, m.TokenBatch) and batch.instance_id == WORKER_ID
            for d in batch.items:
                if d.request_id in got:
                    got[d.request_id].append(d)
                    if d.finish_reason != FinishReason.NONE:
                        pending.discard(d.request_id)
        return got

    async def under_engine_lock(self, fn):
        async with self.worker.engine_lock:
            return fn()


@pytest.fixture(scope="module")
def mesh():
    mesh = Mesh()
    yield mesh
    mesh.close()


# --------------------------------------------------------------------------- after each batch


def assert_healthy(mesh: Mesh, request_ids=(), migrations=()) -> None:
    """Clean up what a batch may have left (its requests, its open incoming migrations), then:
    both services alive and serving, exact tokens for a valid request, no block leaked."""
    async def cleanup():
        for rid in set(request_ids):
            await mesh.to_worker.send_multipart(encode(m.AbortRequest(rid, "fuzz cleanup")))
        for mid, rid in set(migrations):
            await mesh.to_worker.send_multipart(
                encode(m.MigAbort(mid, rid, ErrorCode.STALE, "fuzz cleanup")))
        await mesh.to_worker_exchange(encode(m.AbortRequest("", "barrier")))

    assert mesh.alive()
    mesh.call(cleanup())
    # the scheduler still answers a valid query, and the worker is still registered
    replies = mesh.call(mesh.to_scheduler_exchange(encode(m.ListInstances(7))))
    tables = [r for r in replies if isinstance(r, m.InstanceTable) and r.query_id == 7]
    assert len(tables) == 1 and WORKER_ID in {i.instance_id for i in tables[0].instances}
    # the worker still serves: a valid request streams the exact sim tokens
    rid = f"valid-{next(mesh.valid_ids)}"
    prompt, seed = (104, 105, 33), 11
    req = m.GenerateRequest(rid, mesh.frontend, prompt, m.SamplingParams(max_tokens=5, seed=seed))
    assert mesh.call(mesh.to_worker_exchange(encode(req))) == []
    deltas = mesh.call(mesh.deltas_until({rid}))[rid]
    assert [t for d in deltas for t in d.token_ids] == pseudo_tokens(prompt, seed, 0, 5)
    assert [d.start_index for d in deltas] == list(range(5))
    assert deltas[-1].finish_reason == FinishReason.LENGTH
    # block accounting is whole, and every block is free once nothing is left
    wait_all_free(mesh)
    assert mesh.alive()


def wait_all_free(mesh: Mesh, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        free, nreq, sessions = mesh.call(mesh.under_engine_lock(lambda: (
            mesh.engine.allocator_check(), mesh.engine.num_free_blocks(),
            len(mesh.engine._requests), len(mesh.worker.migration.dest.sessions))[1:]))
        if free == NUM_BLOCKS and nreq == 0 and sessions == 0:
            return
        assert time.monotonic() < deadline, \
            f"{NUM_BLOCKS - free} blocks used, {nreq} requests, {sessions} sessions left"
        time.sleep(0.02)


# --------------------------------------------------------------------------- expectations


def codec_answer(frames, service: str, handled) -> tuple[m.Message | None, ErrorReply | None]:
    """(decoded message if a handler gets it, else None; the exact reply owed if it is not)."""
    try:
        msg, _ = decode(frames or [b""])
    except DecodeError as exc:
        return None, exc.reply()
    if not isinstance(msg, handled):
        return None, ErrorReply(ErrorCode.UNKNOWN_TYPE, f"{service} does not accept "
                                f"{type(msg).__name__}", ref_tag=msg.TAG,
                                query_id=reply_key(msg) or 0)
    return msg, None


def describe(reply) -> str:
    if reply is None:
        return "no reply"
    if isinstance(reply, (ErrorReply, m.MigAbort)):
        return f"{type(reply).__name__} {reply.code.name}"
    return type(reply).__name__


def no_internal(replies) -> None:
    bad = [r for r in replies if isinstance(r, ErrorReply) and r.code is ErrorCode.INTERNAL]
    assert not bad, f"a handler raised: {bad}"


def check_scheduler(frames, replies) -> None:
    msg, owed = codec_answer(frames, "scheduler", SCHEDULER_HANDLED)
    # orders the scheduler sends to an instance we registered from this socket, and forwarded
    # migration replies, may arrive at any time: they are not answers to ``msg`` (a worker's
    # reply to an earlier MigrateCommand, forwarded after that example's sentinel, lands in a
    # later window: only a reply carrying this command's id answers this one)
    replies = [r for r in replies if not isinstance(r, (m.MigrateCommand, m.ScaleOrder))
               and not (isinstance(r, m.MigrateCommandReply)
                        and (not isinstance(msg, m.MigrateCommand)
                             or r.command_id != msg.command_id))]
    if owed is not None:
        assert replies == [owed]
        return
    no_internal(replies)
    assert len(replies) <= 1, replies
    r = replies[0] if replies else None
    event(f"{type(msg).__name__} -> {describe(r)}")
    if isinstance(msg, m.RegisterWorker):
        if msg.protocol_version != m.PROTOCOL_VERSION:
            assert isinstance(r, ErrorReply) and r.code is ErrorCode.VERSION_MISMATCH
            assert r.ref_tag == m.RegisterWorker.TAG
        else:
            assert isinstance(r, m.RegisterAck) and r.instance_id == msg.instance_id
    elif isinstance(msg, m.LoadReport):
        assert r is None or (isinstance(r, ErrorReply) and r.code is ErrorCode.UNKNOWN_PEER)
    elif isinstance(msg, (m.Deregister, m.MigrateCommandReply)):
        assert r is None
    elif isinstance(msg, m.DispatchQuery):
        if isinstance(r, ErrorReply):
            assert r.code is ErrorCode.NO_INSTANCE and r.query_id == msg.query_id
        else:
            assert isinstance(r, m.DispatchReply) and r.query_id == msg.query_id
            assert r.request_id == msg.request_id and r.instance_id not in msg.exclude
    elif isinstance(msg, m.ListInstances):
        assert isinstance(r, m.InstanceTable) and r.query_id == msg.query_id
    elif isinstance(msg, m.MigrateCommand):
        assert r is None or (isinstance(r, m.MigrateCommandReply)
                             and r.command_id == msg.command_id)


def check_worker(frames, replies) -> None:
    msg, owed = codec_answer(frames, WORKER_ID, WORKER_HANDLED)
    if owed is not None:
        assert replies == [owed]
        return
    no_internal(replies)
    assert len(replies) <= 1, replies
    r = replies[0] if replies else None
    event(f"{type(msg).__name__} -> {describe(r)}")
    if r is not None and isinstance(r, ErrorReply):
        assert r.ref_tag == msg.TAG
    if isinstance(msg, m.GenerateRequest):
        assert r is None or (isinstance(r, ErrorReply) and r.code is ErrorCode.BAD_REQUEST
                             and r.request_id == msg.request_id)
    elif isinstance(msg, (m.AbortRequest, m.FrontendGone)):
        assert r is None
    elif isinstance(msg, m.MigAbort):
        assert r is None or (isinstance(r, ErrorReply) and r.code is ErrorCode.UNKNOWN_PEER)
    else:  # MigPreAlloc / MigCommit
        ok = (m.MigAck, m.MigAbort) if isinstance(msg, m.MigPreAlloc) else \
            (m.MigCommitted, m.MigAbort)
        if isinstance(r, ErrorReply):
            assert r.code is ErrorCode.UNKNOWN_PEER
        else:
            assert isinstance(r, ok), r
            assert (r.migration_id, r.request_id) == (msg.migration_id, msg.request_id)


def worker_leftovers(frames_list):
    """Request ids and (migration id, request id) pairs the frames may have created."""
    rids, migrations = set(), set()
    for frames in frames_list:
        try:
            msg, _ = decode(frames or [b""])
        except DecodeError:
            continue
        if isinstance(msg, (m.GenerateRequest, m.MigCommit, m.MigPreAlloc)):
            rids.add(msg.request_id)
        if isinstance(msg, m.MigCommit):
            rids.add(msg.state.request_id)
        if isinstance(msg, (m.MigPreAlloc, m.MigCommit)):
            migrations.add((msg.migration_id, msg.request_id))
    return rids, migrations


# --------------------------------------------------------------------------- strategies

token_ids = st.integers(0, VOCAB - 1)
bad_token_ids = st.integers(-(1 << 63), -1) | st.integers(VOCAB, (1 << 64) - 1)
prompts = (st.lists(token_ids, min_size=1, max_size=24)
           | st.lists(token_ids | bad_token_ids, max_size=24)
           | st.lists(token_ids, min_size=MAX_MODEL_LEN - 2, max_size=MAX_MODEL_LEN + 2)
           ).map(tuple)
huge_ints = st.integers(-(1 << 63), (1 << 64) - 1)
ids = st.text(max_size=12) | st.sampled_from(["", WORKER_ID, "valid-0", "x" * 4096])
sampling = st.builds(
    m.SamplingParams,
    max_tokens=st.integers(-3, 24) | huge_ints,
    temperature=st.floats(allow_nan=True, allow_infinity=True),
    top_p=st.floats(allow_nan=True, allow_infinity=True),
    seed=st.none() | huge_ints,
    stop_token_ids=st.lists(token_ids | huge_ints, max_size=4).map(tuple),
    ignore_eos=st.booleans(),
)


def generate_requests(frontend: str):
    return st.builds(
        m.GenerateRequest, request_id=ids, frontend_address=st.just(frontend),
        prompt_token_ids=prompts,
        sampling=sampling, priority=st.sampled_from(list(m.Priority)),
        output_token_ids=st.lists(token_ids | bad_token_ids, max_size=4).map(tuple),
        arrival_time=st.floats(allow_nan=False) | st.just(0.0))


frontend_addresses = st.sampled_from(["", "bogus", "ipc://", "tcp://*:0", "udp://1.2.3.4:5",
                                      "tcp://127.0.0.1:1", "inproc://nobody"]) | st.text(max_size=8)


@st.composite
def preallocs(draw):
    """MigPreAlloc with raw frames of random sizes (sometimes exactly the blocks' size)."""
    num_blocks = draw(st.integers(-2, 6) | st.integers(NUM_BLOCKS - 1, NUM_BLOCKS + 1) | huge_ints)
    # a fresh (huge) migration id opens a session; small ones mostly hit earlier tombstones
    msg = m.MigPreAlloc(draw(huge_ints | st.integers(0, 3)), draw(ids), draw(ids),
                        draw(st.just(0) | st.integers(-1, 2) | huge_ints),
                        draw(st.just(0) | st.integers(-1, 2) | huge_ints),
                        num_blocks, draw(st.integers(0, 64) | st.integers(-1, 600) | huge_ints))
    exact = max(0, min(num_blocks, NUM_BLOCKS + 1)) * BLOCK_SIZE * 4
    sizes = st.sampled_from([exact, max(0, exact - 1), exact + 4]) | st.integers(0, 300)
    raw = draw(st.just([bytes([0xFF]) * exact])
               | st.lists(sizes.map(lambda n: bytes([0xFF]) * n), max_size=2))
    return encode(msg, raw)


@st.composite
def commits(draw):
    rid = draw(ids)
    state = m.RequestState(
        request_id=draw(st.just(rid) | ids), frontend_address=draw(frontend_addresses),
        prompt_token_ids=draw(prompts),
        output_token_ids=draw(st.lists(token_ids, max_size=3).map(tuple)),
        sampling=draw(sampling), priority=draw(st.sampled_from(list(m.Priority))),
        num_computed_tokens=draw(st.just(0) | st.integers(-2, 40) | huge_ints),
        rng_state=draw(st.binary(max_size=8)), arrival_time=draw(st.floats(allow_nan=False)),
        engine_extra=draw(st.binary(max_size=8)))
    return encode(m.MigCommit(draw(st.integers(0, 3) | huge_ints), rid, draw(ids), state))


def worker_messages(frontend: str):
    return st.one_of(
        generate_requests(frontend).map(encode),
        st.builds(m.GenerateRequest, request_id=ids, frontend_address=frontend_addresses,
                  prompt_token_ids=prompts, sampling=sampling).map(encode),
        st.builds(m.AbortRequest, ids, st.text(max_size=8)).map(encode),
        st.builds(m.FrontendGone, frontend_addresses).map(encode),
        preallocs(),
        commits(),
        st.builds(m.MigAbort, st.integers(0, 3) | huge_ints, ids,
                  st.sampled_from(list(ErrorCode)), st.text(max_size=8)).map(encode),
        messages.map(encode),  # every type, values of the right types
    )


scheduler_messages = st.one_of(
    st.builds(m.RegisterWorker, protocol_version=st.just(m.PROTOCOL_VERSION) | huge_ints,
              instance_id=ids, address=frontend_addresses, engine=st.text(max_size=4),
              model=st.text(max_size=4), block_size=huge_ints | st.integers(-1, 16),
              num_blocks=huge_ints | st.integers(-1, 16), max_model_len=huge_ints,
              max_batch_size=huge_ints | st.integers(-1, 4), pid=huge_ints).map(encode),
    st.builds(m.LoadReport, ids, huge_ints, for_struct(m.InstanceLoad)).map(encode),
    st.builds(m.DispatchQuery, huge_ints, ids, huge_ints, st.sampled_from(list(m.Priority)),
              st.lists(ids, max_size=3).map(tuple)).map(encode),
    st.builds(m.MigrateCommand, huge_ints, ids | st.just(WORKER_ID), ids | st.just(WORKER_ID),
              frontend_addresses, huge_ints | st.integers(-1, 3),
              st.lists(ids, max_size=3).map(tuple), st.text(max_size=8)).map(encode),
    st.builds(m.MigrateCommandReply, huge_ints, st.booleans()).map(encode),
    st.builds(m.Deregister, ids.filter(lambda s: s != WORKER_ID)).map(encode),
    st.builds(m.ScaleOrder, ids, st.booleans(), st.booleans()).map(encode),
    messages.filter(lambda msg: not (isinstance(msg, m.Deregister)
                                     and msg.instance_id == WORKER_ID)).map(encode),
)


# --------------------------------------------------------------------------- tests


def run_scheduler_batch(mesh: Mesh, batch) -> None:
    for frames in batch:
        check_scheduler(frames, mesh.call(mesh.to_scheduler_exchange(frames)))
    assert_healthy(mesh)


def run_worker_batch(mesh: Mesh, batch) -> None:
    for frames in batch:
        check_worker(frames, mesh.call(mesh.to_worker_exchange(frames)))
    rids, migrations = worker_leftovers(batch)
    assert_healthy(mesh, rids, migrations)


@FUZZ
@given(batch=st.lists(any_frames, min_size=1, max_size=4))
def test_scheduler_random_truncated_flipped_and_confused_frames(mesh, batch):
    run_scheduler_batch(mesh, batch)


@FUZZ
@given(batch=st.lists(scheduler_messages, min_size=1, max_size=4))
def test_scheduler_well_typed_adversarial_messages(mesh, batch):
    run_scheduler_batch(mesh, batch)


@FUZZ
@given(batch=st.lists(any_frames, min_size=1, max_size=4))
def test_worker_random_truncated_flipped_and_confused_frames(mesh, batch):
    run_worker_batch(mesh, batch)


@FUZZ
@given(data=st.data())
def test_worker_well_typed_adversarial_messages(mesh, data):
    batch = data.draw(st.lists(worker_messages(mesh.frontend), min_size=1, max_size=4))
    run_worker_batch(mesh, batch)


def expected_stream(msg: m.GenerateRequest) -> tuple[list[int], FinishReason] | None:
    """The sim's exact output for ``msg`` (None: the engine must refuse it)."""
    prompt, outputs, sp = msg.prompt_token_ids, msg.output_token_ids, msg.sampling
    valid = lambda t: 0 <= t < VOCAB  # noqa: E731
    if not prompt or len(prompt) > MAX_MODEL_LEN or sp.max_tokens < 1 \
            or not all(map(valid, prompt + outputs)):
        return None
    max_len = min(MAX_MODEL_LEN, len(prompt) + sp.max_tokens)
    if outputs and len(prompt) + len(outputs) >= max_len:
        return None  # already finished
    end = max(max_len - len(prompt), len(outputs) + 1)  # a step always samples one token
    tokens = pseudo_tokens(prompt, sp.seed, len(outputs), end)
    for i, t in enumerate(tokens):
        if t in sp.stop_token_ids:
            return tokens[:i + 1], FinishReason.STOP
    return tokens, FinishReason.LENGTH


@FUZZ
@given(data=st.data())
def test_worker_generate_request_outcomes_are_exact(mesh, data):
    """Each adversarial GenerateRequest (fresh id, our frontend) streams exactly the sim's
    tokens, or is refused with one ERROR delta carrying BAD_REQUEST; nothing else."""
    msg = data.draw(generate_requests(mesh.frontend))
    rid = f"gen-{next(mesh.valid_ids)}"
    msg = dataclasses.replace(msg, request_id=rid)
    assert mesh.call(mesh.to_worker_exchange(encode(msg))) == []
    deltas = mesh.call(mesh.deltas_until({rid}))[rid]
    want = expected_stream(msg)
    if want is None:
        assert len(deltas) == 1 and deltas[0].finish_reason == FinishReason.ERROR
        assert deltas[0].error_code == ErrorCode.BAD_REQUEST and deltas[0].error
    else:
        tokens, reason = want
        assert [t for d in deltas for t in d.token_ids] == tokens
        assert deltas[-1].finish_reason == reason
        assert deltas[0].start_index == len(msg.output_token_ids)
    assert_healthy(mesh, {rid})


@FUZZ
@given(data=st.data())
def test_worker_orders_from_the_scheduler_channel(mesh, data):
    """What the worker does with whatever arrives on its scheduler DEALER (fed in-process):
    never raises; a ScaleOrder for another instance is ignored; and a MigrateCommand naming
    unknown requests or destinations is refused with a typed reply."""
    msg = data.draw(messages | st.builds(m.ScaleOrder, ids.filter(lambda s: s != WORKER_ID),
                                         st.just(True), st.booleans())
                    | st.builds(m.MigrateCommand, huge_ints, ids | st.just(WORKER_ID), ids,
                                frontend_addresses, huge_ints,
                                st.lists(ids, max_size=3).map(tuple)))
    if isinstance(msg, m.ScaleOrder) and msg.instance_id == WORKER_ID:
        msg = m.ScaleOrder("not-" + WORKER_ID, msg.draining, msg.stop_when_empty)
    if isinstance(msg, (m.RegisterAck, ErrorReply)):
        msg = m.LoadReport("x", 0, m.InstanceLoad(1, 0, 0, 0))  # would disturb registration

    async def feed():
        mesh.worker.on_scheduler_message(msg, [])
        await asyncio.sleep(0.01)  # a MigrateCommand is handled on a task
        return mesh.worker.draining

    assert mesh.call(feed()) is False
    assert_healthy(mesh)
