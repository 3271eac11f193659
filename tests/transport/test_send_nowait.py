"""transport/rpc.send_nowait on an asyncio socket that also has a receive pending.

A ZeroMQ socket's FD is edge-like: any call into the socket (a send included) processes its
pending commands and clears the FD's readiness. A message that arrived just before such a send
then raises no further event, and an ``await sock.recv_multipart()`` already waiting is never
woken (until some later message), unless the sender asks the asyncio socket to re-check its
events, as pyzmq's own non-blocking sends do. In the mesh this stranded orders to workers (a
MigrateCommand or ScaleOrder arriving while the worker sent its load report)."""

from __future__ import annotations

import asyncio
import time

import pytest
import zmq
import zmq.asyncio

from llumnix_zmq.transport.rpc import send_nowait


@pytest.fixture
def pair(tmp_path):
    ctx = zmq.asyncio.Context()
    addr = f"ipc://{tmp_path}/pair"
    router = ctx.socket(zmq.ROUTER)
    router.bind(addr)
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(addr)
    yield router, dealer
    dealer.close(linger=0)
    router.close(linger=0)
    ctx.term()


def test_a_message_arriving_just_before_a_nowait_send_still_wakes_the_waiting_receiver(pair):
    router, dealer = pair

    async def main():
        assert send_nowait(dealer, [b"hello"])  # the router learns the dealer's identity
        identity, hello = await asyncio.wait_for(router.recv_multipart(), 5)
        assert hello == b"hello"
        waiting = asyncio.ensure_future(dealer.recv_multipart())
        await asyncio.sleep(0.05)  # the receive is registered and idle
        await router.send_multipart([identity, b"order"])
        time.sleep(0.2)  # without yielding: the order is in the dealer's mailbox by now
        assert send_nowait(dealer, [b"report"])  # processes the mailbox: the FD edge is gone
        done, _ = await asyncio.wait([waiting], timeout=2.0)
        assert done, "the order was never delivered to the waiting receive"
        assert waiting.result() == [b"order"]
        assert (await asyncio.wait_for(router.recv_multipart(), 5))[1] == b"report"

    asyncio.run(main())


def test_nowait_reports_a_full_pipe_without_raising_or_queueing(tmp_path):
    ctx = zmq.asyncio.Context()
    dealer = ctx.socket(zmq.DEALER)  # never connected: no pipe, so a send cannot go out
    dealer.setsockopt(zmq.SNDHWM, 1)

    async def main():
        return [send_nowait(dealer, [b"x"]) for _ in range(3)]

    try:
        assert asyncio.run(main()) == [False, False, False]
    finally:
        dealer.close(linger=0)
        ctx.term()
