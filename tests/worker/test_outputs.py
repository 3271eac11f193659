"""worker/outputs.OutputSender over a real PUSH → PULL pair: the batches a frontend receives per
engine step, in order (first tokens ahead of the step's other tokens)."""

from __future__ import annotations

import asyncio

import pytest
import zmq
import zmq.asyncio

from llumnix_zmq.protocol.codec import decode
from llumnix_zmq.protocol.messages import FinishReason, TokenBatch, TokenDelta
from llumnix_zmq.worker.outputs import OutputSender


@pytest.fixture
def pull(tmp_path):
    ctx = zmq.asyncio.Context()
    addr = f"ipc://{tmp_path}/tokens"
    sock = ctx.socket(zmq.PULL)
    sock.bind(addr)
    yield ctx, sock, addr
    sock.close(linger=0)
    ctx.term()


def _run(ctx, addr, pull_sock, steps, expect_batches):
    async def main():
        out = OutputSender(ctx, "w-0")
        try:
            for deltas, route in steps:
                out.send(deltas, route.get)
            got = []
            for _ in range(expect_batches):
                frames = await asyncio.wait_for(pull_sock.recv_multipart(), 5)
                msg, _ = decode(frames)
                assert isinstance(msg, TokenBatch)
                got.append((msg.step, [(d.request_id, d.start_index, d.token_ids)
                                       for d in msg.items]))
            assert await pull_sock.poll(100) == 0  # nothing more
            return got
        finally:
            out.close()

    return asyncio.run(main())


def test_first_tokens_travel_ahead_of_the_steps_other_tokens(pull):
    ctx, sock, addr = pull
    route = {r: addr for r in ("a", "b", "c", "d", "e")}
    step1 = [TokenDelta("a", 3, (7,)), TokenDelta("b", 0, (9,)), TokenDelta("c", 5, (4,)),
             TokenDelta("d", 0, (2,)), TokenDelta("e", 8, (1,), FinishReason.LENGTH)]
    step2 = [TokenDelta("b", 1, (6,)), TokenDelta("d", 1, (5,))]  # no first token: one batch
    step3 = [TokenDelta("a", 0, (8,))]  # only first tokens: one batch
    got = _run(ctx, addr, sock, [(step1, route), (step2, route), (step3, route)], 4)
    assert got == [
        (1, [("b", 0, (9,)), ("d", 0, (2,))]),
        (1, [("a", 3, (7,)), ("c", 5, (4,)), ("e", 8, (1,))]),
        (2, [("b", 1, (6,)), ("d", 1, (5,))]),
        (3, [("a", 0, (8,))]),
    ]


def test_an_error_before_any_token_is_not_a_first_token(pull):
    # a refusal (no token ids) rides with the step's main batch
    ctx, sock, addr = pull
    route = {"a": addr, "b": addr}
    step = [TokenDelta("a", 2, (3,)),
            TokenDelta("b", 0, (), FinishReason.ERROR, 0, "busy", 7)]
    got = _run(ctx, addr, sock, [(step, route)], 1)
    assert got == [(1, [("a", 2, (3,)), ("b", 0, ())])]


def test_batches_go_only_to_each_requests_frontend(pull, tmp_path):
    ctx, sock, addr = pull
    other = zmq.Context.shadow(ctx.underlying).socket(zmq.PULL)  # a sync socket
    other_addr = f"ipc://{tmp_path}/other"
    other.bind(other_addr)
    try:
        route = {"a": addr, "b": other_addr, "c": addr}
        step = [TokenDelta("a", 0, (1,)), TokenDelta("b", 0, (2,)), TokenDelta("c", 4, (3,))]
        got = _run(ctx, addr, sock, [(step, route)], 2)
        assert got == [(1, [("a", 0, (1,))]), (1, [("c", 4, (3,))])]
        assert other.poll(2000)
        msg, _ = decode(other.recv_multipart())
        assert [(d.request_id, d.start_index) for d in msg.items] == [("b", 0)]
    finally:
        other.close(linger=0)


def test_every_frontends_first_tokens_go_before_any_frontends_other_tokens(pull):
    """With two frontends, the order of sends within a step: both first-token batches, then
    both main batches (a new request on one frontend does not wait behind the other
    frontend's ~batch-size tokens)."""
    ctx, _sock, _addr = pull
    sent = []
    out = OutputSender(ctx, "w-0")
    out._send_batch = lambda address, items: sent.append(
        (address, [(d.request_id, d.start_index) for d in items]))
    try:
        route = {"a": "ipc://f1", "b": "ipc://f2", "c": "ipc://f1", "d": "ipc://f2",
                 "e": "ipc://f1"}
        step = [TokenDelta("a", 4, (1,)), TokenDelta("b", 6, (2,)), TokenDelta("c", 0, (3,)),
                TokenDelta("d", 0, (4,)), TokenDelta("e", 0, (), FinishReason.ERROR, 0, "x", 7),
                TokenDelta("z", 0, (5,))]  # z: no frontend known (aborted): not sent
        assert out.send(step, route.get) == 2
    finally:
        out.close()
    assert sent == [("ipc://f1", [("c", 0)]), ("ipc://f2", [("d", 0)]),
                    ("ipc://f1", [("a", 4), ("e", 0)]), ("ipc://f2", [("b", 6)])]
