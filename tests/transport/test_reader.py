"""transport/reader.SocketReader over a real PUSH -> PULL pair (ipc): every message handled once,
in order, across budgets and pauses; a failing handler does not stop the intake; close stops it."""

from __future__ import annotations

import asyncio

import pytest
import zmq
import zmq.asyncio

from llumnix_zmq.transport.reader import SocketReader

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def pair(tmp_path):
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    pull.bind(f"ipc://{tmp_path}/r")
    push.connect(f"ipc://{tmp_path}/r")
    yield pull, push
    push.close(linger=0)
    pull.close(linger=0)
    ctx.term()


async def until(predicate, timeout=5.0):
    end = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < end, "timed out"
        await asyncio.sleep(0.005)


def test_messages_before_and_after_start_in_order_past_the_budget(pair):
    pull, push = pair
    got = []

    async def main():
        for i in range(10):  # waiting before the reader exists: the fd will not signal them
            push.send(b"%d" % i)
        await asyncio.sleep(0.05)
        reader = SocketReader(pull, lambda frames: got.append(bytes(frames[0].buffer)), budget=3)
        reader.start()
        await until(lambda: len(got) == 10)
        for i in range(10, 25):
            push.send_multipart([b"%d" % i, b"x"])
        await until(lambda: len(got) == 25)
        await asyncio.sleep(0.05)
        reader.close()

    asyncio.run(main())
    assert got == [b"%d" % i for i in range(25)]


def test_a_pause_runs_what_the_handler_scheduled_before_the_next_message(pair):
    pull, push = pair
    events = []

    def on_frames(frames):
        name = bytes(frames[0].buffer).decode()
        events.append(name)
        if name.startswith("first"):
            asyncio.get_running_loop().call_soon(events.append, f"after {name}")
            return True
        return None

    async def main():
        reader = SocketReader(pull, on_frames)
        for name in ("first-a", "rest-a", "first-b", "rest-b"):
            push.send(name.encode())
        await asyncio.sleep(0.05)
        reader.start()
        await until(lambda: len(events) == 6)
        reader.close()

    asyncio.run(main())
    assert events == ["first-a", "after first-a", "rest-a", "first-b", "after first-b",
                      "rest-b"]


def test_a_failing_handler_is_counted_and_the_next_message_is_handled(pair):
    pull, push = pair
    got = []

    def on_frames(frames):
        body = bytes(frames[0].buffer)
        if body == b"bad":
            raise RuntimeError("boom")
        got.append(body)

    async def main():
        reader = SocketReader(pull, on_frames)
        reader.start()
        for body in (b"one", b"bad", b"two"):
            push.send(body)
        await until(lambda: len(got) == 2)
        reader.close()
        return reader.failures

    assert asyncio.run(main()) == 1
    assert got == [b"one", b"two"]


def test_close_stops_the_intake(pair):
    pull, push = pair
    got = []

    async def main():
        reader = SocketReader(pull, lambda frames: got.append(bytes(frames[0].buffer)))
        reader.start()
        push.send(b"before")
        await until(lambda: got == [b"before"])
        reader.close()
        push.send(b"after")
        await asyncio.sleep(0.1)

    asyncio.run(main())
    assert got == [b"before"]
    assert pull.recv(zmq.NOBLOCK) == b"after"  # still there, unread


def test_needs_a_plain_socket_and_a_positive_budget():
    actx = zmq.asyncio.Context()
    sock = actx.socket(zmq.PULL)
    try:
        with pytest.raises(TypeError):
            SocketReader(sock, print)
    finally:
        sock.close(linger=0)
        actx.term()
    ctx = zmq.Context()
    plain = ctx.socket(zmq.PULL)
    try:
        with pytest.raises(ValueError):
            SocketReader(plain, print, budget=0)
    finally:
        plain.close(linger=0)
        ctx.term()
