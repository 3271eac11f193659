"""The worker process: a llumlet (local scheduling, reporting, migration) around one engine.

Sockets (one per role and direction):
- ``recv_from_peers``: ROUTER bound at ``cfg.bind``; frontends send Generate/Abort, peers send
  migration messages.
- ``to_scheduler``: DEALER (identity = instance id) for registration, load reports (heartbeats)
  and orders from the scheduler.
- ``outputs``: one PUSH per frontend (worker/outputs.py).

Engine access is serialised by ``engine_lock``: the step loop holds it for a step (which may run
in a thread for the torch engine) and every handler that touches the engine takes it too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import zmq
import zmq.asyncio

from ..clock import Clock, SystemClock
from ..common.aio import cancel_all, supervise
from ..common.reqtrace import RequestTracer
from ..config import WorkerConfig
from ..engine.base import Engine, EngineError, EngineRequest
from ..protocol.messages import (
    PROTOCOL_VERSION,
    AbortRequest,
    Deregister,
    ErrorCode,
    ErrorReply,
    FinishReason,
    FrontendGone,
    GenerateRequest,
    LoadReport,
    MigAbort,
    MigCommit,
    MigPreAlloc,
    MigrateCommand,
    MigrateCommandReply,
    RegisterAck,
    RegisterWorker,
    ScaleOrder,
    TokenDelta,
)
from ..security.curve import watch
from ..transport.dispatcher import Router
from ..transport.rpc import RpcClient, RpcError
from ..transport.sockets import bound_address, make_socket, plain_context
from .migration import MigrationCoordinator
from .outputs import OutputSender
from .pacing import StepPacer

log = logging.getLogger(__name__)


class WorkerService:
    def __init__(self, cfg: WorkerConfig, ctx: zmq.asyncio.Context, engine: Engine,
                 clock: Clock | None = None, security=None):
        self.cfg = cfg
        self.ctx = ctx
        self.engine = engine
        self.clock = clock or SystemClock()
        self.instance_id = cfg.instance_id or f"worker-{os.getpid()}"
        self.security = security
        self.client_keys = security.client() if security else None
        # a plain socket: the Router receives from the fd itself (transport/dispatcher.py)
        self.recv_from_peers = make_socket(plain_context(ctx), zmq.ROUTER,
                                           cfg.bind, bind=True,
                                           curve=security.server() if security else None)
        self.address = cfg.advertise or bound_address(self.recv_from_peers)
        self.to_scheduler = make_socket(ctx, zmq.DEALER, cfg.scheduler, bind=False,
                                        identity=self.instance_id.encode(),
                                        curve=self.client_keys)
        self.scheduler = RpcClient(self.to_scheduler, on_message=self.on_scheduler_message)
        self.outputs = OutputSender(ctx, self.instance_id, self.client_keys,
                                    on_gone=self.frontend_disconnected)
        self.router = Router(self.recv_from_peers, self.handlers(), self.instance_id)
        self.frontend_of: dict[str, str] = {}  # request id -> frontend PULL address
        self.engine_lock = asyncio.Lock()
        self.work = asyncio.Event()
        self.report_now = asyncio.Event()
        self.registered = asyncio.Event()
        self.draining = False
        self.stop_when_empty = False
        self.report_period = cfg.report_period_s
        self.seq = 0
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="engine") \
            if engine.kind != "sim" else None
        self.migration: MigrationCoordinator | None = MigrationCoordinator.for_service(self)
        self.tracer = RequestTracer(cfg.trace_requests)
        self._stop: asyncio.Event | None = None

    def handlers(self):
        return {
            GenerateRequest: self.on_generate,
            AbortRequest: self.on_abort,
            FrontendGone: self.on_frontend_gone,
            MigPreAlloc: self.on_migration_message,
            MigCommit: self.on_migration_message,
            MigAbort: self.on_migration_message,
        }

    async def on_migration_message(self, identity: bytes, msg, raw):
        if self.migration is None:
            return ErrorReply(ErrorCode.UNKNOWN_TYPE, f"engine {self.engine.kind} cannot migrate",
                              ref_tag=msg.TAG)
        return await self.migration.on_peer_message(identity, msg, raw)

    # --- frontend-facing handlers -------------------------------------------------------
    async def on_generate(self, identity: bytes, msg: GenerateRequest, raw):
        self.tracer.mark("received", msg.request_id)
        if msg.frontend_address and not self.outputs.usable(msg.frontend_address):
            return ErrorReply(ErrorCode.BAD_REQUEST, f"frontend address "
                              f"{msg.frontend_address[:64]!r} is not a usable endpoint",
                              msg.request_id, msg.TAG)
        if self.draining:
            self.fail(msg.request_id, msg.frontend_address, ErrorCode.BUSY,
                      f"instance {self.instance_id} is draining")
            return None
        req = EngineRequest(msg.request_id, list(msg.prompt_token_ids), msg.sampling,
                            msg.priority, msg.frontend_address, list(msg.output_token_ids),
                            msg.arrival_time or time.time())
        async with self.engine_lock:
            if msg.request_id in self.frontend_of:
                log.warning("duplicate request %s ignored", msg.request_id)
                return None
            try:
                self.engine.add_request(req)
            except EngineError as exc:
                self.fail(msg.request_id, msg.frontend_address, ErrorCode.BAD_REQUEST, str(exc))
                return None
            self.frontend_of[msg.request_id] = msg.frontend_address
            self.tracer.mark("added", msg.request_id)
            if self.migration is not None:
                self.migration.on_request_added(msg)
        self.work.set()
        self.report_now.set()
        return None

    async def on_abort(self, identity: bytes, msg: AbortRequest, raw):
        await self.abort(msg.request_id, msg.reason)
        return None

    async def abort(self, request_id: str, reason: str) -> bool:
        async with self.engine_lock:
            if self.migration is not None:
                self.migration.on_request_gone(request_id)
            found = self.engine.abort_request(request_id)
            self.frontend_of.pop(request_id, None)
        if found:
            log.debug("aborted %s (%s)", request_id, reason)
            self.report_now.set()
        return found

    async def on_frontend_gone(self, identity: bytes, msg: FrontendGone, raw):
        ids = [rid for rid, fe in self.frontend_of.items() if fe == msg.frontend_address]
        for rid in ids:
            await self.abort(rid, "frontend gone")
        self.outputs.forget(msg.frontend_address)
        log.info("frontend %s gone: aborted %d requests", msg.frontend_address, len(ids))
        return None

    def frontend_disconnected(self, address: str) -> None:
        """A frontend's token socket went away and did not come back: its clients are gone,
        so its requests are aborted and their blocks freed."""
        log.warning("frontend %s disconnected: aborting its requests", address)
        asyncio.get_running_loop().create_task(
            self.on_frontend_gone(b"", FrontendGone(address), []))

    def notify_frontend(self, address: str, msg) -> None:
        self.outputs.notify(address, msg)

    def fail(self, request_id: str, frontend: str, code: ErrorCode, message: str) -> None:
        delta = TokenDelta(request_id, 0, (), FinishReason.ERROR, 0, message, int(code))
        self.outputs.send([delta], lambda _rid: frontend)

    # --- scheduler-facing ---------------------------------------------------------------
    def registration(self) -> RegisterWorker:
        e = self.engine
        return RegisterWorker(PROTOCOL_VERSION, self.instance_id, self.address, e.kind,
                              e.model_name, e.block_size, e.num_blocks, e.max_model_len,
                              e.max_batch_size, os.getpid())

    async def register_loop(self, stop: asyncio.Event) -> None:
        """Register, and register again whenever the scheduler forgets us (restart)."""
        while not stop.is_set():
            if self.registered.is_set():
                await asyncio.sleep(0.05)
                continue
            try:
                ack = await self._register_once()
            except RpcError as exc:
                if exc.code == ErrorCode.VERSION_MISMATCH:
                    log.error("scheduler refused registration: %s", exc.message)
                    stop.set()
                    return
                log.info("registration: %s; retrying", exc.message)
                await asyncio.sleep(0.2)
                continue
            self.report_period = ack.report_period_s or self.report_period
            self.registered.set()
            self.report_now.set()
            log.info("registered with scheduler %s as %s at %s", ack.scheduler_epoch,
                     self.instance_id, self.address)

    async def _register_once(self) -> RegisterAck:
        msg = self.registration()
        fut = asyncio.get_running_loop().create_future()
        self._register_future = fut
        self.scheduler.send_nowait(msg)
        try:
            return await asyncio.wait_for(fut, 1.0)
        except asyncio.TimeoutError:
            raise RpcError(ErrorCode.TIMEOUT, "scheduler did not answer") from None

    def on_scheduler_message(self, msg, raw) -> None:
        fut = getattr(self, "_register_future", None)
        if isinstance(msg, RegisterAck) or (isinstance(msg, ErrorReply)
                                            and msg.ref_tag == RegisterWorker.TAG):
            if fut is not None and not fut.done():
                if isinstance(msg, RegisterAck):
                    fut.set_result(msg)
                else:
                    fut.set_exception(RpcError(msg.code, msg.message))
            return
        if isinstance(msg, ErrorReply):
            if msg.code == ErrorCode.UNKNOWN_PEER:
                log.info("scheduler does not know us (restarted?): registering again")
                self.registered.clear()
            else:
                log.warning("scheduler error: %s %s", msg.code.name, msg.message)
            return
        if isinstance(msg, MigrateCommand):
            asyncio.get_running_loop().create_task(self.on_migrate_command(msg))
            return
        if isinstance(msg, ScaleOrder):
            if msg.instance_id != self.instance_id:
                log.warning("ignoring scale order for %r (this is %s)", msg.instance_id[:64],
                            self.instance_id)
                return
            self.draining = msg.draining
            self.stop_when_empty = msg.stop_when_empty
            self.report_now.set()
            self.work.set()
            log.info("scale order: draining=%s stop_when_empty=%s", msg.draining,
                     msg.stop_when_empty)
            return
        log.warning("unexpected %s from scheduler", type(msg).__name__)

    async def on_migrate_command(self, msg: MigrateCommand) -> None:
        if self.migration is None:
            reply = MigrateCommandReply(msg.command_id, False, (),
                                        f"engine {self.engine.kind} cannot migrate")
        else:
            reply = await self.migration.start_command(msg)
        self.scheduler.send_nowait(reply)

    def current_load(self):
        load = self.engine.load()
        if self.migration is not None:
            load = self.migration.annotate(load)
        return dataclasses.replace(load, draining=self.draining)

    async def report_loop(self, stop: asyncio.Event) -> None:
        min_gap = 0.005
        last = 0.0
        while not stop.is_set():
            try:
                await asyncio.wait_for(self.report_now.wait(), self.report_period)
            except asyncio.TimeoutError:
                pass
            gap = time.monotonic() - last
            if gap < min_gap:
                await asyncio.sleep(min_gap - gap)
            self.report_now.clear()
            if not self.registered.is_set():
                continue
            self.seq += 1
            self.scheduler.send_nowait(LoadReport(self.instance_id, self.seq, self.current_load()))
            last = time.monotonic()

    # --- the engine loop ----------------------------------------------------------------
    async def engine_loop(self, stop: asyncio.Event) -> None:
        """Check shutdown, step, emit. The sim engine's modelled step time is paced against a
        deadline (``pacing.StepPacer``): bookkeeping between steps (emitting, reports,
        handlers) overlaps the modelled device time as it would on a GPU, instead of adding
        to it."""
        loop = asyncio.get_running_loop()
        pacer = StepPacer(SystemClock(), self.cfg.time_scale)
        while not stop.is_set():
            if not self.engine.has_work():
                pacer.idle()
                if self.draining and self.stop_when_empty and not self.frontend_of:
                    log.info("drained: stopping")
                    stop.set()
                    return
                self.work.clear()
                try:
                    await asyncio.wait_for(self.work.wait(), 0.5)
                except asyncio.TimeoutError:
                    pass
                continue
            pacer.begin()
            async with self.engine_lock:
                if self.executor is None:
                    result = self.engine.step()
                else:
                    result = await loop.run_in_executor(self.executor, self.engine.step)
                if self.migration is not None:
                    self.migration.after_step(result)
                # where each delta goes, fixed now: a migration may move its request before
                # the emit below (the source's last token still goes to the frontend)
                routes = {d.request_id: self.frontend_of.get(d.request_id) for d in result.deltas}
            if self.executor is None and self.cfg.time_scale > 0:
                await asyncio.sleep(pacer.end(result.duration_s))
            else:
                await asyncio.sleep(0)
            emitted_at = time.perf_counter() if self.tracer.enabled else 0.0
            self.emit(result.deltas, routes)
            if self.tracer.enabled:  # marked after the send: tracing does not delay it
                for d in result.deltas:
                    if d.start_index == 0 and d.token_ids:
                        self.tracer.mark("first_emit", d.request_id, emitted_at)

    def emit(self, deltas: list[TokenDelta], routes: dict | None = None) -> None:
        self.outputs.send(deltas, (self.frontend_of if routes is None else routes).get)
        finished = [d.request_id for d in deltas if d.finish_reason != FinishReason.NONE]
        for rid in finished:
            self.frontend_of.pop(rid, None)
        if finished:
            self.report_now.set()

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        self.scheduler.start()
        tasks = [asyncio.create_task(self.router.serve(), name="router"),
                 asyncio.create_task(self.register_loop(stop), name="register"),
                 asyncio.create_task(self.report_loop(stop), name="report"),
                 asyncio.create_task(self.engine_loop(stop), name="engine")]
        if self.security is not None:
            tasks.append(asyncio.create_task(watch(self.recv_from_peers, self.instance_id),
                                             name="auth-watch"))
        for t in tasks:
            supervise(t, stop, log)
        if self.migration is not None:
            self.migration.start()
        log.info("worker %s (%s/%s) at %s", self.instance_id, self.engine.kind,
                 self.engine.model_name, self.address)
        try:
            await stop.wait()
        finally:
            await self.shutdown(tasks)

    async def shutdown(self, tasks) -> None:
        try:
            self.scheduler.send_nowait(Deregister(self.instance_id, "shutdown"))
            await asyncio.sleep(0.01)
        except Exception:  # the scheduler may be gone: nothing to tell
            pass
        await cancel_all(tasks)
        if self.migration is not None:
            await self.migration.close()
        await self.scheduler.close()
        self.outputs.close()
        self.recv_from_peers.close(linger=0)
        if self.executor is not None:
            self.executor.shutdown(wait=True)
        self.engine.close()
        self.tracer.close()
        log.info("worker %s stopped", self.instance_id)
