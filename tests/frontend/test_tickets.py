"""frontend/tickets.TicketBook: the scheduler's decision for the next request, fetched ahead,
used only fresh and for a live instance; the next one fetched on every take; kept warm while
requests come and let lapse when idle. Fake clock, fake fetch (no sockets)."""

from __future__ import annotations

import asyncio

import pytest

from llumnix_zmq.clock import FakeClock
from llumnix_zmq.frontend.tickets import Ticket, TicketBook
from llumnix_zmq.protocol.messages import ErrorCode
from llumnix_zmq.transport.rpc import RpcError


class FakeScheduler:
    """Answers fetch n with w<n> and ticket id 100 + n (or fails while ``down``); records the
    hints and the released ticket ids."""

    def __init__(self):
        self.hints: list[int] = []
        self.released: list[int] = []
        self.down = False
        self.gate: asyncio.Event | None = None

    async def fetch(self, num_prompt_tokens: int, release_ticket: int) -> tuple[str, str, int]:
        self.hints.append(num_prompt_tokens)
        self.released.append(release_ticket)
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise RpcError(ErrorCode.TIMEOUT, "no reply")
        n = len(self.hints)
        return f"w{n}", f"tcp://h:{n}", 100 + n


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


def live(_iid: str) -> bool:
    return True


async def test_first_take_misses_and_fetches_then_the_next_take_hits():
    clock, sched = FakeClock(100.0), FakeScheduler()
    book = TicketBook(sched.fetch, clock, ttl_s=0.05)
    assert book.take(live, 64) is None  # nothing held yet: the caller asks directly
    await settle()
    assert book.ticket == Ticket("w1", "tcp://h:1", 100.0, 101)
    assert sched.hints == [64]  # the last request's prompt length is the hint
    clock.advance(0.01)
    assert book.take(live, 80) == Ticket("w1", "tcp://h:1", 100.0, 101)
    await settle()
    assert book.ticket == Ticket("w2", "tcp://h:2", 100.01, 102)
    assert sched.hints == [64, 80]
    assert sched.released == [0, 0]  # a used ticket is not released
    assert (book.hits, book.misses) == (1, 1)
    await book.close()


async def test_a_stale_ticket_or_one_for_a_dead_instance_is_not_used():
    clock, sched = FakeClock(), FakeScheduler()
    book = TicketBook(sched.fetch, clock, ttl_s=0.05, keep_warm_s=0.0)
    book.take(live, 10)
    await settle()
    clock.advance(0.06)  # older than the ttl
    assert book.take(live, 10) is None
    await settle()
    assert book.ticket.instance_id == "w2"
    assert book.take(lambda iid: iid != "w2", 10) is None  # w2 left meanwhile
    await settle()
    assert book.ticket.instance_id == "w3"
    assert (book.hits, book.misses) == (0, 3)
    # both dropped tickets were released with the next fetch: the scheduler stops counting them
    assert sched.released == [0, 101, 102]
    await book.close()


async def test_one_fetch_in_flight_at_a_time_and_concurrent_takes_never_share_a_ticket():
    clock, sched = FakeClock(), FakeScheduler()
    book = TicketBook(sched.fetch, clock, ttl_s=1.0)
    book.take(live, 10)
    await settle()
    sched.gate = asyncio.Event()
    got = [book.take(live, 10) for _ in range(3)]  # a burst: one hit, then misses
    assert [t.instance_id if t else None for t in got] == ["w1", None, None]
    await settle()
    assert len(sched.hints) == 2  # only one refill went out for the whole burst
    sched.gate.set()
    await settle()
    assert book.ticket.instance_id == "w2"
    await book.close()


async def test_scheduler_down_gives_no_ticket_and_the_book_recovers():
    clock, sched = FakeClock(), FakeScheduler()
    sched.down = True
    book = TicketBook(sched.fetch, clock, ttl_s=0.05)
    assert book.take(live, 10) is None
    await settle()
    assert book.ticket is None
    sched.down = False
    assert book.take(live, 10) is None
    await settle()
    assert book.ticket.instance_id == "w2"
    await book.close()


async def test_kept_warm_while_requests_come_and_let_lapse_when_idle():
    clock, sched = FakeClock(), FakeScheduler()
    book = TicketBook(sched.fetch, clock, ttl_s=0.01, keep_warm_s=0.5)
    book.take(live, 10)
    await settle()
    assert book.ticket.instance_id == "w1"
    await asyncio.sleep(0.03)  # the real loop's timer fires; the request was recent
    await settle()
    assert len(sched.hints) >= 2 and book.ticket is not None
    # each refresh releases the ticket it replaces (expired unused)
    assert sched.released[:2] == [0, 101]
    clock.advance(1.0)  # no request for longer than keep_warm_s
    n = len(sched.hints)
    await asyncio.sleep(0.03)
    await settle()
    assert book.ticket is None and len(sched.hints) == n
    await book.close()


def test_ttl_must_be_positive():
    with pytest.raises(ValueError):
        TicketBook(FakeScheduler().fetch, FakeClock(), ttl_s=0)


async def test_the_next_ticket_is_fetched_a_delay_after_a_take_and_a_take_inside_it_asks_directly():
    clock, sched = FakeClock(100.0), FakeScheduler()
    book = TicketBook(sched.fetch, clock, ttl_s=1.0, refill_delay_s=0.02)
    book.ticket = Ticket("w0", "tcp://h:0", 100.0, 7)
    assert book.take(live, 64) == Ticket("w0", "tcp://h:0", 100.0, 7)
    await settle()
    assert sched.hints == []  # not yet: the request that took it goes first
    assert book.take(live, 32) is None  # inside the delay: nothing held, ask the scheduler
    await asyncio.sleep(0.05)
    assert sched.hints == [32]  # one fetch, with the latest hint
    assert book.ticket == Ticket("w1", "tcp://h:1", 100.0, 101)
    assert (book.hits, book.misses) == (1, 1)
    await book.close()


async def test_closing_during_the_refill_delay_fetches_nothing():
    sched = FakeScheduler()
    book = TicketBook(sched.fetch, FakeClock(100.0), ttl_s=1.0, refill_delay_s=0.05)
    assert book.take(live, 64) is None
    await settle()
    await book.close()
    await asyncio.sleep(0.08)
    assert (sched.hints, book.ticket, book._inflight, book._delayed) == ([], None, None, None)


def test_refill_delay_must_not_be_negative():
    with pytest.raises(ValueError):
        TicketBook(FakeScheduler().fetch, FakeClock(), ttl_s=1.0, refill_delay_s=-0.001)
