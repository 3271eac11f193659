"""The global scheduler process: registry, liveness, dispatch, migration pairing, scaling.

Sockets: one ROUTER (``recv_from_peers``) that workers and frontends connect DEALERs to.
It holds no request payloads — only load figures — so a restart loses nothing that the next
round of worker reports does not rebuild.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from dataclasses import dataclass

import zmq
import zmq.asyncio

from ..clock import Clock, SystemClock
from ..common.aio import cancel_all, supervise
from ..config import SchedulerConfig
from ..protocol.messages import (
    PROTOCOL_VERSION,
    Deregister,
    DispatchQuery,
    DispatchReply,
    ErrorCode,
    ErrorReply,
    InstanceTable,
    ListInstances,
    LoadReport,
    MigrateCommand,
    MigrateCommandReply,
    RegisterAck,
    RegisterWorker,
    ScaleOrder,
)
from ..security.curve import watch
from ..transport.dispatcher import Router
from ..transport.sockets import make_socket
from .decisions import Decider
from .metrics import SchedulerMetrics
from .policy.freeness import blocks_for_tokens
from .registry import Registry

log = logging.getLogger(__name__)


@dataclass
class _PendingCommand:
    identity: bytes  # who asked (frontend/CLI); empty for the scheduler's own orders
    command_id: int  # their id


class SchedulerService:
    def __init__(self, cfg: SchedulerConfig, ctx: zmq.asyncio.Context, clock: Clock | None = None,
                 launcher=None, security=None):
        self.cfg = cfg
        self.ctx = ctx
        self.clock = clock or SystemClock()
        self.epoch = uuid.uuid4().hex[:12]
        self.registry = Registry(cfg.heartbeat_timeout_s)
        self.metrics = SchedulerMetrics()
        self.decider = Decider(cfg, random.Random(cfg.seed), self.metrics, launcher)
        self.security = security
        self.sock = make_socket(ctx, zmq.ROUTER, cfg.bind, bind=True,
                                curve=security.server() if security else None)
        self.router = Router(self.sock, {
            RegisterWorker: self.on_register,
            LoadReport: self.on_report,
            Deregister: self.on_deregister,
            DispatchQuery: self.on_dispatch,
            ListInstances: self.on_list,
            MigrateCommand: self.on_migrate_command,
            MigrateCommandReply: self.on_migrate_reply,
        }, "scheduler")
        self._commands: dict[int, _PendingCommand] = {}
        self._command_ids = iter(range(1, 1 << 62))

    # --- handlers -------------------------------------------------------------------------
    def on_register(self, identity: bytes, msg: RegisterWorker, raw):
        if msg.protocol_version != PROTOCOL_VERSION:
            log.warning("refusing %s: protocol %d, ours %d", msg.instance_id,
                        msg.protocol_version, PROTOCOL_VERSION)
            return ErrorReply(ErrorCode.VERSION_MISMATCH,
                              f"protocol {msg.protocol_version} unsupported, need {PROTOCOL_VERSION}",
                              ref_tag=msg.TAG)
        self.registry.register(msg, identity, self.clock.now())
        self.metrics.registrations.inc()
        log.info("registered %s at %s (%s/%s, %d blocks)", msg.instance_id, msg.address,
                 msg.engine, msg.model, msg.num_blocks)
        return RegisterAck(PROTOCOL_VERSION, msg.instance_id, self.cfg.report_period_s, self.epoch)

    def on_report(self, identity: bytes, msg: LoadReport, raw):
        rec = self.registry.report(msg.instance_id, msg.load, self.clock.now())
        if rec is None:  # e.g. after a scheduler restart: ask the worker to register again
            return ErrorReply(ErrorCode.UNKNOWN_PEER, f"unknown instance {msg.instance_id}",
                              ref_tag=msg.TAG)
        if rec.identity != identity:
            rec.identity = identity
        return None

    def on_deregister(self, identity: bytes, msg: Deregister, raw):
        if self.registry.remove(msg.instance_id):
            log.info("instance %s deregistered (%s)", msg.instance_id, msg.reason)
        return None

    def on_dispatch(self, identity: bytes, msg: DispatchQuery, raw):
        if msg.release_ticket:  # a ticket the frontend did not use: it is not queued anywhere
            self.registry.release_ticket(msg.release_ticket)
        infos = [i for i in self.registry.infos(self.clock.now()) if i.instance_id not in msg.exclude]
        choice = self.decider.dispatch(infos, msg.num_prompt_tokens, msg.priority)
        if choice is None:
            return ErrorReply(ErrorCode.NO_INSTANCE, "no live instance", msg.request_id,
                              msg.TAG, msg.query_id)
        instance_id, reason = choice
        rec = self.registry.get(instance_id)
        self.registry.note_dispatch(instance_id, msg.request_id,
                                    blocks_for_tokens(msg.num_prompt_tokens, rec.load.block_size),
                                    msg.num_prompt_tokens, msg.priority)
        ticket = self.registry.issue_ticket(instance_id) if not msg.request_id else 0
        log.debug("dispatch %s -> %s (%s)", msg.request_id, instance_id, reason)
        return DispatchReply(msg.query_id, msg.request_id, instance_id, rec.reg.address, reason,
                             ticket)

    def on_list(self, identity: bytes, msg: ListInstances, raw):
        return InstanceTable(msg.query_id, tuple(self.registry.infos(self.clock.now())),
                             self.epoch, self.cfg.dispatch_policy)

    async def on_migrate_command(self, identity: bytes, msg: MigrateCommand, raw):
        reply = await self.order_migration(msg, identity)
        return reply

    def on_migrate_reply(self, identity: bytes, msg: MigrateCommandReply, raw):
        pending = self._commands.pop(msg.command_id, None)
        if pending is None:
            return None
        self.metrics.migration_orders.labels("accepted" if msg.accepted else "refused").inc()
        if pending.identity:
            fwd = MigrateCommandReply(pending.command_id, msg.accepted, msg.request_ids, msg.reason)
            asyncio.get_running_loop().create_task(self.router.send(pending.identity, fwd))
        return None

    # --- orders ---------------------------------------------------------------------------
    async def order_migration(self, msg: MigrateCommand, requester: bytes = b""):
        src = self.registry.get(msg.source_id)
        dst = self.registry.get(msg.destination_id)
        if src is None or dst is None or msg.source_id == msg.destination_id:
            return MigrateCommandReply(msg.command_id, False, (),
                                       "unknown or identical source/destination")
        cid = next(self._command_ids)
        self._commands[cid] = _PendingCommand(requester, msg.command_id)
        order = MigrateCommand(cid, msg.source_id, msg.destination_id, dst.reg.address,
                               msg.num_requests, msg.request_ids, msg.reason, msg.max_blocks)
        if not await self.router.send(src.identity, order):
            self._commands.pop(cid, None)
            return MigrateCommandReply(msg.command_id, False, (), "source unreachable")
        return None  # the worker's reply is forwarded by on_migrate_reply

    async def set_draining(self, instance_id: str, draining: bool, stop: bool) -> bool:
        rec = self.registry.order_drain(instance_id, draining)
        if rec is None:
            return False
        return await self.router.send(rec.identity, ScaleOrder(instance_id, draining, stop))

    # --- loops ----------------------------------------------------------------------------
    async def reap_loop(self) -> None:
        period = max(0.01, self.cfg.heartbeat_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            for rec in self.registry.reap(self.clock.now()):
                self.metrics.instance_deaths.inc()
            self.metrics.observe_instances(self.registry.infos(self.clock.now()))

    async def pairing_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.pairing_period_s)
            infos = self.registry.infos(self.clock.now())
            for pair in self.decider.pairs(infos, self.clock.now()):
                order = MigrateCommand(0, pair.source_id, pair.destination_id,
                                       num_requests=pair.num_requests, reason=pair.reason,
                                       max_blocks=max(0, pair.max_blocks or 0))
                await self.order_migration(order)
            await self.decider.autoscale(self, infos, self.clock.now())

    async def run(self, stop: asyncio.Event) -> None:
        if self.cfg.metrics_port:
            self.metrics.serve(self.cfg.metrics_host, self.cfg.metrics_port)
        tasks = [asyncio.create_task(self.router.serve(), name="router"),
                 asyncio.create_task(self.reap_loop(), name="reap")]
        if self.security is not None:
            tasks.append(asyncio.create_task(watch(self.sock, "scheduler"), name="auth-watch"))
        if self.cfg.enable_migration or self.cfg.autoscale_max:
            tasks.append(asyncio.create_task(self.pairing_loop(), name="pairing"))
        for t in tasks:
            supervise(t, stop, log)
        log.info("scheduler %s listening on %s (dispatch=%s)", self.epoch, self.cfg.bind,
                 self.cfg.dispatch_policy)
        try:
            await stop.wait()
        finally:
            await cancel_all(tasks)
            self.sock.close(linger=0)
            log.info("scheduler stopped")
