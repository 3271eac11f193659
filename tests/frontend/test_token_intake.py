"""frontend/cluster.Cluster.on_token_frames, the token intake (fed by transport/reader.py): first
tokens are applied at once and their handlers run before the rest of a batch; malformed and
unexpected messages are dropped and nothing else changes. Real Cluster, real codec."""

from __future__ import annotations

import asyncio

import zmq.asyncio

from llumnix_zmq.config import FrontendConfig
from llumnix_zmq.frontend.cluster import Cluster
from llumnix_zmq.frontend.metrics import FrontendMetrics
from llumnix_zmq.frontend.streams import RequestStream
from llumnix_zmq.protocol.codec import encode
from llumnix_zmq.protocol.messages import AbortRequest, TokenBatch, TokenDelta
from llumnix_zmq.tokenizer import ByteTokenizer


def make():
    ctx = zmq.asyncio.Context()
    cluster = Cluster(FrontendConfig(scheduler="ipc:///nonexistent/sched"), ctx,
                      FrontendMetrics())
    streams = {}
    for rid in ("old", "new"):
        s = streams[rid] = RequestStream(rid, [256, 104], ByteTokenizer(), [], 8)
        s.instance_id = "A"
        cluster.streams[rid] = s
    streams["old"].on_delta(TokenDelta("old", 0, (104,)), "A")
    return cluster, ctx, streams


def close(cluster, ctx):
    cluster.recv_tokens.close(linger=0)
    cluster.to_scheduler.sock.close(linger=0)
    ctx.term()


def test_first_tokens_are_applied_and_their_handlers_run_before_the_rest():
    async def main():
        cluster, ctx, streams = make()
        order = []

        async def handler(rid):
            await streams[rid].news.wait()
            order.append((rid, list(streams["new"].output_ids), list(streams["old"].output_ids)))

        task = asyncio.create_task(handler("new"))
        await asyncio.sleep(0)
        batch = TokenBatch("A", 7, (TokenDelta("old", 1, (105,)), TokenDelta("new", 0, (72,))))
        try:
            assert cluster.on_token_frames(encode(batch)) is True
            assert streams["new"].output_ids == [72] and streams["old"].output_ids == [104]
            await task  # the new request's handler ran before the old one's token was applied
            await asyncio.sleep(0)
            assert streams["old"].output_ids == [104, 105]
        finally:
            close(cluster, ctx)
        return order

    assert asyncio.run(main()) == [("new", [72], [104])]


def test_a_batch_without_first_tokens_is_applied_at_once():
    async def main():
        cluster, ctx, streams = make()
        try:
            batch = TokenBatch("A", 7, (TokenDelta("old", 1, (105, 106)),))
            assert cluster.on_token_frames(encode(batch)) is False
            return list(streams["old"].output_ids)
        finally:
            close(cluster, ctx)

    assert asyncio.run(main()) == [104, 105, 106]


def test_malformed_and_unexpected_messages_are_dropped():
    async def main():
        cluster, ctx, streams = make()
        try:
            frames = encode(TokenBatch("A", 7, (TokenDelta("old", 1, (105,)),)))
            assert cluster.on_token_frames([frames[0], frames[1][:-3]]) is False
            assert cluster.on_token_frames([b"\x00"]) is False
            assert cluster.on_token_frames(encode(AbortRequest("old", "?"))) is False
            return list(streams["old"].output_ids), streams["old"].finished
        finally:
            close(cluster, ctx)

    assert asyncio.run(main()) == ([104], False)
