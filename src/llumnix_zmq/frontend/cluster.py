"""The frontend's side of the mesh: scheduler link, last-known instance table, worker links,
token intake.

- ``to_scheduler``: DEALER → scheduler ROUTER (dispatch queries, instance table, admin orders).
- ``recv_tokens``: PULL bound at ``bind_tokens``; every worker PUSHes TokenBatches here.
- ``to_workers``: one DEALER per worker address (Generate/Abort), created on first use.

If the scheduler stops answering, dispatch falls back to the last-known load table (logged and
counted); the table is rebuilt from the scheduler as soon as it answers again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time

import zmq
import zmq.asyncio

from ..protocol.codec import DecodeError, decode, encode
from ..protocol.messages import (
    AbortRequest,
    DispatchQuery,
    ErrorCode,
    ErrorReply,
    FinishReason,
    FrontendGone,
    GenerateRequest,
    InstanceInfo,
    InstanceState,
    ListInstances,
    MigrateCommand,
    MigrateCommandReply,
    Priority,
    RequestMoved,
    TokenBatch,
)
from ..clock import SystemClock
from ..scheduler.decisions import local_dispatch
from ..security.curve import watch
from ..transport.reader import SocketReader
from ..transport.rpc import RpcClient, RpcError, send_nowait
from ..transport.sockets import bound_address, make_socket, plain_context
from .streams import RequestStream, StreamEnd
from .tickets import TicketBook

log = logging.getLogger(__name__)


class NoInstance(Exception):
    pass


class Cluster:
    def __init__(self, cfg, ctx: zmq.asyncio.Context, metrics, security=None):
        self.cfg = cfg
        self.ctx = ctx
        self.metrics = metrics
        self.security = security
        self.client_keys = security.client() if security else None
        self.to_scheduler = RpcClient(make_socket(ctx, zmq.DEALER, cfg.scheduler, bind=False,
                                                  curve=self.client_keys))
        # a plain socket read from the loop's readiness callback (transport/reader.py)
        self.recv_tokens = make_socket(plain_context(ctx), zmq.PULL,
                                       cfg.bind_tokens, bind=True,
                                       curve=security.server() if security else None)
        self.token_reader = SocketReader(self.recv_tokens, self.on_token_frames)
        self.tokens_address = cfg.advertise_tokens or bound_address(self.recv_tokens)
        self.to_workers: dict[str, zmq.asyncio.Socket] = {}
        self.instances: dict[str, InstanceInfo] = {}
        self.streams: dict[str, RequestStream] = {}
        self.scheduler_ok = False
        self.scheduler_epoch = ""
        self.rng = random.Random(0)
        self.rr_state = None
        self._tasks: list[asyncio.Task] = []
        self._restart_seen = 0.0
        self._ticket_hits = metrics.dispatch_tickets.labels("hit")
        self._ticket_misses = metrics.dispatch_tickets.labels("miss")
        self.tickets = (TicketBook(self._fetch_ticket, SystemClock(), cfg.dispatch_ticket_ttl_s,
                                   refill_delay_s=cfg.dispatch_ticket_refill_delay_s)
                        if cfg.dispatch_ticket_ttl_s > 0 else None)

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self.to_scheduler.start()
        loop = asyncio.get_running_loop()
        self.token_reader.start()
        self._tasks = [loop.create_task(self.refresh_loop(), name="refresh")]
        if self.security is not None:
            self._tasks.append(loop.create_task(watch(self.recv_tokens, "frontend tokens"),
                                                name="auth-watch"))

    @property
    def tasks(self) -> list[asyncio.Task]:
        return self._tasks

    async def close(self) -> None:
        for address, sock in self.to_workers.items():  # workers free this frontend's requests
            send_nowait(sock, encode(FrontendGone(self.tokens_address)))
        await asyncio.sleep(0.01)
        if self.tickets is not None:
            await self.tickets.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.to_scheduler.close()
        for sock in self.to_workers.values():
            sock.close(linger=0)
        self.token_reader.close()
        self.recv_tokens.close(linger=0)

    def live_instances(self) -> list[InstanceInfo]:
        return [i for i in self.instances.values() if i.state == InstanceState.ACTIVE]

    # --- the instance table ----------------------------------------------------------------
    async def refresh_loop(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.cfg.instance_refresh_s)

    async def refresh(self) -> None:
        try:
            table = await self.to_scheduler.call(ListInstances, self.cfg.dispatch_timeout_s)
        except RpcError as exc:
            if self.scheduler_ok:
                log.warning("scheduler unreachable (%s): serving from the last-known table of "
                            "%d instances", exc.message, len(self.instances))
            self.scheduler_ok = False
            self.metrics.scheduler_up.set(0)
            return
        if not self.scheduler_ok:
            log.info("scheduler %s reachable: %d instances", table.scheduler_epoch,
                     len(table.instances))
        restarted = self.scheduler_epoch not in ("", table.scheduler_epoch)
        self.scheduler_ok = True
        self.metrics.scheduler_up.set(1)
        fresh = {i.instance_id: i for i in table.instances}
        if restarted and set(fresh) < set(self.instances):
            # a restarted scheduler is still hearing from its workers again: keep our table for
            # a grace period (an instance that died meanwhile is dropped once it ends)
            now = time.monotonic()
            self._restart_seen = self._restart_seen or now
            if now - self._restart_seen < self.cfg.restart_grace_s:
                return
        self._restart_seen = 0.0
        self.scheduler_epoch = table.scheduler_epoch
        for gone in set(self.instances) - set(fresh):
            self.on_instance_gone(gone)
        self.instances = fresh
        self.metrics.observe_instances(table.instances)

    def on_instance_gone(self, instance_id: str) -> None:
        info = self.instances.get(instance_id)
        address = info.address if info else ""
        sock = self.to_workers.pop(address, None)
        if sock is not None:
            sock.close(linger=0)
        orphans = [s for s in self.streams.values() if s.instance_id == instance_id
                   and not s.finished]
        # a migration's source that died after COMMIT but before its last tokens reached us:
        # the destination runs on past a gap nobody can fill. Stop it there and re-run the
        # request from the tokens we have (as for an orphan).
        stalled = [s for s in self.streams.values() if s.instance_id != instance_id
                   and s.stalled_on(instance_id)]
        log.warning("instance %s left the cluster; resuming %d in-flight requests elsewhere",
                    instance_id, len(orphans) + len(stalled))
        loop = asyncio.get_running_loop()
        for s in stalled:
            log.warning("%s: tokens %d.. were lost with %s; restarting it from there (it ran on "
                        "%s)", s.request_id, len(s.output_ids), instance_id, s.instance_id)
            self.abort_on(s.instance_id, s.request_id, "tokens lost with a dead instance")
            s.drop_parked()
        for s in orphans + stalled:
            loop.create_task(self.resume(s, instance_id))

    async def resume(self, stream: RequestStream, dead: str) -> None:
        """Re-submit a request whose instance died, with the tokens already streamed, to another
        instance (re-prefill). Greedy requests continue exactly; a sampled one continues with a
        fresh random state (its seed cannot replay a generator across engines)."""
        if stream.resumes >= self.cfg.max_resumes:
            self.metrics.instance_failures.inc()
            stream.finish(StreamEnd("error", f"instance {dead} died while serving the request "
                                    f"and the retry budget ({self.cfg.max_resumes}) is spent",
                                    503))
            return
        iid = await self._resubmit(stream, dead)
        if iid is None:
            self.metrics.instance_failures.inc()
            stream.finish(StreamEnd("error", f"instance {dead} died while serving the request "
                                    "and no other instance is left", 503))
            return
        self.metrics.resumes.inc()
        log.info("resumed %s on %s after %s died (%d tokens kept)", stream.request_id, iid,
                 dead, len(stream.output_ids))

    async def redirect(self, stream: RequestStream, busy: str) -> None:
        """Dispatch again, without ``busy``, a request that instance refused before starting it
        (it is draining). Counts against the resume budget; no instance left: a clear 503."""
        iid = await self._resubmit(stream, busy)
        if iid is None:
            stream.finish(StreamEnd("error", f"instance {busy} is draining and no other "
                                    "instance is available", 503))
            return
        log.info("%s: %s is draining; sent to %s instead", stream.request_id, busy, iid)

    async def _resubmit(self, stream: RequestStream, away_from: str) -> str | None:
        """Submit ``stream`` again, with the tokens it has, anywhere but ``away_from`` and the
        instances it left before (one more resume); None when no instance is left."""
        stream.resumes += 1
        stream.excluded = (*stream.excluded, away_from)
        msg = dataclasses.replace(stream.request, output_token_ids=tuple(stream.output_ids))
        try:
            return await self.submit(stream, msg, msg.priority, stream.excluded)
        except NoInstance:
            return None

    # --- dispatch and submission -----------------------------------------------------------
    async def dispatch(self, request_id: str, num_prompt_tokens: int, priority: Priority,
                       exclude: tuple[str, ...] = ()) -> tuple[str, str]:
        if self.tickets is not None and priority == Priority.NORMAL and not exclude:
            ticket = self.tickets.take(self._is_live, num_prompt_tokens)
            (self._ticket_hits if ticket else self._ticket_misses).inc()
            if ticket is not None:
                return ticket.instance_id, ticket.address
        try:
            reply = await self.to_scheduler.call(
                lambda q: DispatchQuery(q, request_id, num_prompt_tokens, priority, exclude),
                self.cfg.dispatch_timeout_s)
            self.scheduler_ok = True
            return reply.instance_id, reply.address
        except RpcError as exc:
            if exc.code != ErrorCode.NO_INSTANCE:
                self.scheduler_ok = False
            # NO_INSTANCE while our table knows live ones: a restarted scheduler still waiting
            # for re-registrations; anything else: the scheduler is unreachable
            self.metrics.fallback_dispatch.inc()
            log.warning("dispatch of %s from the last-known table (scheduler: %s)", request_id,
                        exc.message)
        infos = [i for i in self.live_instances() if i.instance_id not in exclude]
        choice = local_dispatch(self.cfg.dispatch_policy, infos, num_prompt_tokens, priority,
                                self.rng, self, long_prompt_tokens=self.cfg.long_prompt_tokens,
                                long_prompt_min_freeness=self.cfg.long_prompt_min_freeness)
        if choice is None:
            raise NoInstance("no live instance known")
        return choice, self.instances[choice].address

    def _is_live(self, instance_id: str) -> bool:
        info = self.instances.get(instance_id)
        return info is not None and info.state == InstanceState.ACTIVE

    async def _fetch_ticket(self, num_prompt_tokens: int,
                            release_ticket: int = 0) -> tuple[str, str, int]:
        """The scheduler's decision for a NORMAL request that has not arrived yet (and the
        release of an unused earlier one)."""
        reply = await self.to_scheduler.call(
            lambda q: DispatchQuery(q, "", num_prompt_tokens, Priority.NORMAL, (),
                                    release_ticket),
            self.cfg.dispatch_timeout_s)
        return reply.instance_id, reply.address, reply.ticket_id

    def worker_socket(self, address: str):
        sock = self.to_workers.get(address)
        if sock is None:
            sock = make_socket(self.ctx, zmq.DEALER, address, bind=False, curve=self.client_keys)
            self.to_workers[address] = sock
            asyncio.get_running_loop().create_task(self._drain_worker(address, sock))
        return sock

    async def _drain_worker(self, address: str, sock) -> None:
        """Workers answer only malformed input on this socket: log it."""
        try:
            while True:
                frames = await sock.recv_multipart()
                try:
                    msg, _ = decode(frames)
                except DecodeError as exc:
                    log.warning("malformed reply from %s: %s", address, exc.message)
                    continue
                if isinstance(msg, ErrorReply):
                    log.warning("worker %s: %s %s", address, msg.code.name, msg.message)
        except (asyncio.CancelledError, zmq.ZMQError):
            return

    async def submit(self, stream: RequestStream, msg: GenerateRequest, priority: Priority,
                     exclude: tuple[str, ...] = ()) -> str:
        instance_id, address = await self.dispatch(msg.request_id, len(msg.prompt_token_ids),
                                                   priority, exclude)
        stream.instance_id = instance_id
        stream.request = msg
        self.streams[msg.request_id] = stream
        await self.worker_socket(address).send_multipart(encode(msg), copy=False)
        return instance_id

    def abort(self, request_id: str, reason: str) -> None:
        stream = self.streams.pop(request_id, None)
        if stream is None:
            return
        self.abort_on(stream.instance_id, request_id, reason)

    def abort_on(self, instance_id: str, request_id: str, reason: str) -> None:
        info = self.instances.get(instance_id)
        if info is not None:
            send_nowait(self.worker_socket(info.address), encode(AbortRequest(request_id, reason)))

    def forget(self, request_id: str) -> None:
        self.streams.pop(request_id, None)

    # --- tokens ----------------------------------------------------------------------------
    def on_token_frames(self, frames) -> bool:
        """One message from a worker (token_reader). True: first tokens were applied, so their
        handlers run (writing the first SSE chunks) before anything else is applied.

        First tokens first: a step's batch carries ~one token per running request, and a new
        request's TTFT should not wait behind everyone else's next token. The worker sends a
        step's first tokens in a batch of their own, just before the main one; a batch that
        carries both (from elsewhere) has its other deltas applied on the loop's next turn."""
        try:
            msg, _ = decode(frames)
        except DecodeError as exc:
            log.warning("malformed token batch dropped: %s", exc.message)
            return False
        if isinstance(msg, RequestMoved):
            self.on_moved(msg)
            return False
        if not isinstance(msg, TokenBatch):
            log.warning("unexpected %s on the token socket", type(msg).__name__)
            return False
        items = msg.items
        first = [d for d in items if d.start_index == 0]
        if not first:
            self.apply_deltas(msg.instance_id, items)
            return False
        self.apply_deltas(msg.instance_id, first)
        if len(first) < len(items):
            asyncio.get_running_loop().call_soon(
                self.apply_deltas, msg.instance_id, [d for d in items if d.start_index != 0])
        return True

    def apply_deltas(self, instance_id: str, deltas) -> None:
        applied = 0
        for delta in deltas:
            stream = self.streams.get(delta.request_id)
            if stream is None:  # a copy nobody waits for (e.g. after a resume): stop it
                if delta.finish_reason == FinishReason.NONE:
                    self.abort_on(instance_id, delta.request_id, "no longer wanted")
                continue
            if (delta.finish_reason == FinishReason.ERROR and delta.error_code == ErrorCode.BUSY
                    and not stream.output_ids and stream.resumes < self.cfg.max_resumes):
                # refused before it started (the instance began draining after the decision
                # was made, e.g. a ticket's): send it elsewhere instead of failing the client
                asyncio.get_running_loop().create_task(self.redirect(stream, instance_id))
                continue
            before = len(stream.output_ids)
            stream.on_delta(delta, instance_id)
            applied += len(stream.output_ids) - before
        self.metrics.tokens.inc(applied)

    def on_moved(self, msg: RequestMoved) -> None:
        """A migration committed: the destination owns the request now (unless tokens from
        further along already named an owner). If it is already gone, resume at once."""
        stream = self.streams.get(msg.request_id)
        if stream is None or not stream.moved_to(msg.instance_id, msg.start_index):
            return
        if msg.instance_id not in self.instances:
            asyncio.get_running_loop().create_task(self.resume(stream, msg.instance_id))

    # --- admin -----------------------------------------------------------------------------
    async def migrate(self, source: str, destination: str, request_ids: tuple[str, ...],
                      num: int, timeout: float = 5.0) -> MigrateCommandReply:
        return await self.to_scheduler.call(
            lambda q: MigrateCommand(q, source, destination, "", num, request_ids, "admin"),
            timeout)

