"""frontend/cluster.Cluster: a request that its instance refused before starting it (BUSY: the
instance began draining after the decision, e.g. a dispatch ticket's) is dispatched again
elsewhere instead of failing; the budget and an empty cluster end it with a clear 503; an error
after tokens were streamed is not retried. Real Cluster, its submission stubbed."""

from __future__ import annotations

import asyncio

import zmq.asyncio

from llumnix_zmq.config import FrontendConfig
from llumnix_zmq.frontend.cluster import Cluster, NoInstance
from llumnix_zmq.frontend.metrics import FrontendMetrics
from llumnix_zmq.frontend.streams import RequestStream
from llumnix_zmq.protocol.messages import (
    ErrorCode,
    FinishReason,
    GenerateRequest,
    Priority,
    SamplingParams,
    TokenDelta,
)
from llumnix_zmq.tokenizer import ByteTokenizer

BUSY = TokenDelta("r1", 0, (), FinishReason.ERROR, 0, "instance A is draining", ErrorCode.BUSY)


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


def make(max_resumes: int = 3, free: tuple[str, ...] = ("B", "C")):
    ctx = zmq.asyncio.Context()
    cluster = Cluster(FrontendConfig(scheduler="ipc:///nonexistent/sched",
                                     max_resumes=max_resumes), ctx, FrontendMetrics())
    stream = RequestStream("r1", [256, 104, 105], ByteTokenizer(), [], 8)
    msg = GenerateRequest("r1", cluster.tokens_address, (256, 104, 105),
                          SamplingParams(max_tokens=8), Priority.NORMAL)
    stream.request, stream.instance_id = msg, "A"
    cluster.streams["r1"] = stream
    calls = []

    async def submit(s, m, priority, exclude=()):
        calls.append((m.request_id, priority, exclude))
        left = [i for i in free if i not in exclude]
        if not left:
            raise NoInstance("none")
        s.instance_id = left[0]
        return left[0]

    cluster.submit = submit
    return cluster, ctx, stream, calls


def close(cluster, ctx):
    cluster.recv_tokens.close(linger=0)
    cluster.to_scheduler.sock.close(linger=0)
    ctx.term()


async def test_busy_before_any_token_is_sent_elsewhere():
    cluster, ctx, stream, calls = make()
    cluster.apply_deltas("A", [BUSY])
    await settle()
    assert calls == [("r1", Priority.NORMAL, ("A",))]
    assert not stream.finished and stream.instance_id == "B" and stream.resumes == 1
    # the new instance's tokens stream as usual
    cluster.apply_deltas("B", [TokenDelta("r1", 0, (104, 105))])
    assert stream.output_ids == [104, 105]
    close(cluster, ctx)


async def test_no_other_instance_or_no_budget_left_ends_with_503():
    cluster, ctx, stream, calls = make(free=("A",))
    cluster.apply_deltas("A", [BUSY])
    await settle()
    assert stream.end.reason == "error" and stream.end.status == 503
    close(cluster, ctx)

    cluster, ctx, stream, calls = make(max_resumes=0)
    cluster.apply_deltas("A", [BUSY])
    await settle()
    assert calls == [] and stream.end.status == 503  # the worker's BUSY, passed through
    close(cluster, ctx)


async def test_an_error_after_tokens_were_streamed_is_not_retried():
    cluster, ctx, stream, calls = make()
    cluster.apply_deltas("A", [TokenDelta("r1", 0, (104,))])
    cluster.apply_deltas("A", [TokenDelta("r1", 1, (), FinishReason.ERROR, 0, "draining",
                                          ErrorCode.BUSY)])
    await settle()
    assert calls == [] and stream.finished and stream.output_ids == [104]
    close(cluster, ctx)
