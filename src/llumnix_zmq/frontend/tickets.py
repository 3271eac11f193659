"""Dispatch tickets: the scheduler's decision for the *next* request, fetched ahead of need.

Every dispatch is still decided by the global scheduler (DESIGN.md: the frontend "asks the
scheduler where to send each request"), but the question is asked before the request arrives:
the frontend holds one ticket — a ``DispatchReply`` the scheduler gave for a request that has
not come yet — and a new NORMAL request takes it instead of waiting for a round trip. Taking a
ticket starts the fetch of the next one.

A ticket is used only while it is fresh (``ttl_s``, default the workers' report period: the
scheduler's view of the loads is no older than that anyway) and only for an instance the
frontend still knows live. A stale or unusable ticket is dropped and the request asks the
scheduler directly, as without tickets. While requests keep coming (one within
``keep_warm_s``), an expiring ticket is replaced in the background so the next request finds a
fresh one; an idle frontend lets its ticket lapse and sends nothing.

The scheduler counts each decision (a ticket too) as a request queued on the chosen instance
until that instance's next load report, so back-to-back tickets do not all pick the same
instance (scheduler/registry.py ``note_dispatch``). A ticket that no request uses (it expired,
or its instance left) is released with the next fetch (``release_ticket``): otherwise, while a
report is late, each refresh would add one more phantom request to the instances it picked and
steer real requests away from them.

The next ticket is fetched ``refill_delay_s`` after a take (the frontend uses 2 ms), not at
once: by then the request that took the ticket is on its way to its worker, and the scheduler
round trip (two more processes woken) does not compete with it for the CPU. On the 2-vCPU
machine this was measured on (64 streams, three interleaved pairs of runs), fetching at once
added 0.3-0.5 ms to the median time the mesh adds to a request's first token, on the way to the
worker and on the way back (bench/serving_overhead.py, paired); a request that comes within the
delay finds no ticket and asks the scheduler directly.

State per book: ``ticket`` (None or one decision), at most one fetch in flight or waiting
for its delay, one refresh timer. High-priority requests, requests that exclude instances
(resumes) and a frontend whose scheduler does not answer never use tickets.

    book = TicketBook(fetch, clock, ttl_s=0.05)
    ticket = book.take(lambda iid: iid in live, num_prompt_tokens)  # None: ask directly
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

from ..clock import Clock
from ..transport.rpc import RpcError

log = logging.getLogger(__name__)

# (prompt tokens, unused ticket to release or 0) -> (instance id, address, ticket id)
Fetch = Callable[[int, int], Awaitable[tuple[str, str, int]]]


@dataclass(frozen=True)
class Ticket:
    instance_id: str
    address: str
    issued_at: float
    ticket_id: int = 0  # the scheduler's name for it (DispatchReply.ticket_id)


class TicketBook:
    def __init__(self, fetch: Fetch, clock: Clock, ttl_s: float, keep_warm_s: float = 1.0,
                 refill_delay_s: float = 0.0):
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        if refill_delay_s < 0:
            raise ValueError("refill_delay_s must be >= 0")
        self.refill_delay_s = refill_delay_s
        self._fetch = fetch
        self.clock = clock
        self.ttl_s = ttl_s
        self.keep_warm_s = keep_warm_s
        self.ticket: Ticket | None = None
        self.hint_tokens = 1  # the last request's prompt length: the best guess for the next
        self.last_take = float("-inf")
        self.hits = 0
        self.misses = 0
        self._inflight: asyncio.Task | None = None
        self._delayed: asyncio.TimerHandle | None = None  # a refill waiting for its delay
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._release = 0  # an unused ticket's id, sent with the next fetch

    def take(self, is_live: Callable[[str], bool], num_prompt_tokens: int) -> Ticket | None:
        """The held ticket if it is fresh and its instance live (consumed), else None. Either
        way the next ticket is fetched."""
        now = self.clock.now()
        self.last_take = now
        self.hint_tokens = max(1, num_prompt_tokens)
        ticket, self.ticket = self.ticket, None
        usable = ticket is not None and now - ticket.issued_at <= self.ttl_s and is_live(
            ticket.instance_id)
        if ticket is not None and not usable:
            self._drop_unused(ticket)
        self.refill(self.refill_delay_s)
        if usable:
            self.hits += 1
            return ticket
        self.misses += 1
        return None

    def _drop_unused(self, ticket: Ticket) -> None:
        if ticket.ticket_id:
            self._release = ticket.ticket_id

    def refill(self, delay_s: float = 0.0) -> None:
        """Fetch a ticket (the held one is gone: taken or expired) ``delay_s`` from now unless
        a fetch is in flight or waiting to start. The wait is a timer, not a task: a take (on
        the request's path) costs no task creation."""
        if self._closed or self._inflight is not None or self._delayed is not None:
            return
        if delay_s > 0:
            self._delayed = asyncio.get_running_loop().call_later(delay_s, self._start_fill)
        else:
            self._start_fill()

    def _start_fill(self) -> None:
        self._delayed = None
        if not self._closed:
            self._inflight = asyncio.get_running_loop().create_task(self._fill(),
                                                                    name="ticket")

    async def _fill(self) -> None:
        release, self._release = self._release, 0
        try:
            instance_id, address, ticket_id = await self._fetch(self.hint_tokens, release)
        except RpcError as exc:  # the direct path will find out and fall back if it must
            log.debug("no dispatch ticket: %s", exc.message)
            self.ticket = None
            return
        finally:
            self._inflight = None
        self.ticket = Ticket(instance_id, address, self.clock.now(), ticket_id)
        self._arm_refresh()

    def _arm_refresh(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self.ttl_s, self._on_expiry)

    def _on_expiry(self) -> None:
        self._timer = None
        if self.ticket is not None:
            self._drop_unused(self.ticket)
        self.ticket = None
        if self.clock.now() - self.last_take <= self.keep_warm_s:
            self.refill()  # traffic: keep a fresh one ready; idle: let it lapse

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._delayed is not None:
            self._delayed.cancel()
            self._delayed = None
        if self._inflight is not None:
            self._inflight.cancel()
            await asyncio.gather(self._inflight, return_exceptions=True)
