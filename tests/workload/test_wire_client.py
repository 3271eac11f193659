"""bench/wire_client.py: the byte-timestamping SSE client. Its parser is fed responses split at
awkward places through a fake transport; then one real run against an aiohttp server on
127.0.0.1 checks the pool and the open loop end to end."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path

from aiohttp import web

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_wire_client", REPO / "bench" / "wire_client.py")
wire = importlib.util.module_from_spec(spec)
sys.modules["bench_wire_client"] = wire
spec.loader.exec_module(wire)


class FakeTransport:
    def __init__(self):
        self.written = b""
        self.closed = False

    def write(self, data):
        self.written += data

    def close(self):
        self.closed = True


def sse(obj) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n")


def text_chunk(t: str) -> dict:
    return {"choices": [{"index": 0, "text": t}]}


def feed(pieces: list[bytes], times: list[float]):
    """Run one request on a _Conn, delivering ``pieces`` with perf_counter reading ``times``."""
    async def main():
        conn = wire._Conn()
        conn.connection_made(FakeTransport())
        res = wire.WireResult(0)
        fut = conn.request(b"POST / HTTP/1.1\r\n\r\n", res)
        res.start = 100.0
        clock = iter(times)
        real = wire.time.perf_counter
        wire.time.perf_counter = lambda: next(clock)
        try:
            for p in pieces:
                conn.data_received(p)
        finally:
            wire.time.perf_counter = real
        assert fut.done()
        return res, conn
    return asyncio.run(main())


def test_first_text_chunk_is_stamped_with_the_arrival_of_its_bytes_even_split_across_reads():
    body = chunked(sse(text_chunk("")), sse(text_chunk("Hi")), sse(text_chunk(" there")),
                   sse(b"[DONE]"))
    raw = HEAD + body
    cut1 = raw.index(b"Hi") - 3  # the first text event straddles reads 2 and 3
    cut2 = raw.index(b"\n\n", cut1) + 2  # read 3 ends right after it
    pieces = [raw[:len(HEAD) + 5], raw[len(HEAD) + 5:cut1], raw[cut1:cut2], raw[cut2:]]
    res, conn = feed(pieces, [100.010, 100.020, 100.030, 100.040])
    assert res.error is None
    assert round(res.ttft, 6) == 0.030  # the read that completed the "Hi" event
    assert round(res.e2e, 6) == 0.040
    assert res.chunks == 2
    assert conn.transport.written == b"POST / HTTP/1.1\r\n\r\n"


def test_content_length_body_and_delta_content_chat_chunks():
    body = sse({"choices": [{"delta": {"role": "assistant"}}]}) + \
        sse({"choices": [{"delta": {"content": "ok"}}]}) + sse(b"[DONE]")
    raw = (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    res, _ = feed([raw[:40], raw[40:]], [100.5, 100.7])
    assert (res.error, round(res.ttft, 6), round(res.e2e, 6), res.chunks) == (None, 0.7, 0.7, 1)


def test_non_200_and_stream_errors_end_the_request_with_a_clear_error():
    res, _ = feed([b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\n{}"], [101.0])
    assert res.error == "HTTP 503 Service Unavailable" and res.ttft is None
    err = HEAD + chunked(sse({"error": {"message": "boom"}}))
    res, _ = feed([err], [101.0])
    assert res.error.startswith("stream error") and res.ttft is None


def _serve(handler, client):
    async def main():
        app = web.Application()
        app.router.add_post("/v1/completions", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            return await client(f"http://127.0.0.1:{port}/v1")
        finally:
            await runner.cleanup()
    return asyncio.run(main())


def test_run_wire_against_a_local_server_reuses_warm_connections():
    peers = set()

    async def handler(request):
        body = await request.json()
        peers.add(request.transport.get_extra_info("peername"))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(body["max_tokens"]):
            await resp.write(sse(text_chunk(f"t{i}")))
        await resp.write(sse(b"[DONE]"))
        await resp.write_eof()
        return resp

    class Item:
        def __init__(self, arrival_s, n):
            self.arrival_s, self.output_tokens = arrival_s, n

    items = [Item(i * 0.05, 3 + i % 3) for i in range(6)]  # one at a time
    res = _serve(handler, lambda url: wire.run_wire(
        url, items, lambda i, it: {"max_tokens": it.output_tokens}, warm=2, timeout=10))
    assert [r.error for r in res] == [None] * 6
    assert [r.chunks for r in res] == [3, 4, 5, 3, 4, 5]
    assert all(0 < r.ttft <= r.e2e for r in res)
    assert len(peers) == 1  # kept alive: each request took the connection the last one freed


def test_last_chunk_after_done_is_not_read_as_the_next_responses_head():
    """[DONE] ends the result but not the HTTP response: when the terminating ``0\\r\\n\\r\\n``
    arrives in a later read, it belongs to this response (``ended``), so a request sent on the
    same connection afterwards parses its own head. (Before, a reused connection read the stray
    terminator as a status line: the run recorded an ``HTTP `` error and the frontend logged
    "Cannot write to closing transport".)"""
    async def main():
        conn = wire._Conn()
        conn.connection_made(FakeTransport())
        first = wire.WireResult(0)
        done = conn.request(b"POST / HTTP/1.1\r\n\r\n", first)
        raw = HEAD + chunked(sse(text_chunk("a")), sse(b"[DONE]"))
        tail = raw.rindex(b"0\r\n\r\n")
        conn.data_received(raw[:tail])
        assert done.done() and first.error is None and first.e2e is not None
        assert not conn.ended.done()  # the last chunk is still on its way
        conn.data_received(raw[tail:])
        assert conn.ended.done() and conn._buf == bytearray()
        second = wire.WireResult(1)
        done2 = conn.request(b"POST / HTTP/1.1\r\n\r\n", second)
        conn.data_received(HEAD + chunked(sse(text_chunk("b")), sse(text_chunk("c")),
                                          sse(b"[DONE]")))
        assert done2.done() and conn.ended.done()
        return second

    second = asyncio.run(main())
    assert (second.error, second.chunks) == (None, 2)


def test_content_length_response_ends_when_its_body_is_in():
    async def main():
        conn = wire._Conn()
        conn.connection_made(FakeTransport())
        res = wire.WireResult(0)
        conn.request(b"POST / HTTP/1.1\r\n\r\n", res)
        body = sse(text_chunk("x")) + sse(b"[DONE]")
        raw = (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
        conn.data_received(raw[:-1])
        assert not conn.ended.done()
        conn.data_received(raw[-1:])
        return res, conn.ended.done()

    res, ended = asyncio.run(main())
    assert res.error is None and ended


def test_a_kernel_receive_stamp_is_the_first_tokens_time_and_the_read_is_kept_apart():
    """``_arrival`` turns SO_TIMESTAMPNS (CLOCK_REALTIME) into the perf_counter clock at the
    read; ``ttft`` is that arrival, ``ttft_user`` when the client got to the bytes."""
    real_time, real_perf = wire.time.time, wire.time.perf_counter
    wire.time.time, wire.time.perf_counter = (lambda: 1000.0030), (lambda: 50.0030)
    try:
        stamp = [(wire.socket.SOL_SOCKET, wire.SO_TIMESTAMPNS,
                  wire.struct.pack("qq", 1000, 1_000_000))]  # 1000.001 s: 2 ms before the read
        arrived = wire._arrival(stamp)
        assert wire._arrival([]) is None
        assert wire._arrival([(wire.socket.SOL_SOCKET, 99, b"\0" * 16)]) is None
    finally:
        wire.time.time, wire.time.perf_counter = real_time, real_perf
    assert abs(arrived - 50.001) < 1e-9
    body = chunked(sse(text_chunk("Hi")), sse(b"[DONE]"))
    res, _ = feed([HEAD + body], [100.0050])  # read at 100.005 s...

    async def stamped():
        conn = wire._Conn()
        conn.connection_made(FakeTransport())
        r = wire.WireResult(0)
        conn.request(b"POST / HTTP/1.1\r\n\r\n", r)
        r.start = 100.0
        real = wire.time.perf_counter
        wire.time.perf_counter = lambda: 100.0050
        try:
            conn.data_received(HEAD + body, arrived=100.0020)  # ...received at 100.002 s
        finally:
            wire.time.perf_counter = real
        return r

    r = asyncio.run(stamped())
    assert (res.kernel_stamped, round(res.ttft, 6), round(res.ttft_user, 6)) == (False, 0.005, 0.005)
    assert (r.kernel_stamped, round(r.ttft, 6), round(r.ttft_user, 6), round(r.e2e, 6)) == \
        (True, 0.002, 0.005, 0.002)


class _Item:
    def __init__(self, arrival_s):
        self.arrival_s = arrival_s


def test_real_socket_reads_carry_kernel_stamps_no_later_than_the_read():
    async def handler(request):
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(0.03)
        await resp.write(sse({"id": "cmpl-7", **text_chunk("x")}))
        await resp.write(sse(b"[DONE]"))
        await resp.write_eof()
        return resp

    res = _serve(handler, lambda url: wire.run_wire(
        url, [_Item(i * 0.04) for i in range(6)], lambda i, it: {}, warm=1, timeout=10))
    assert [r.error for r in res] == [None] * 6
    assert all(0.03 <= r.ttft <= r.ttft_user <= r.e2e + 1 for r in res)
    assert [r.response_id for r in res] == ["cmpl-7"] * 6
    if sys.platform == "linux":  # stamping starts lazily: at least the later reads carry one
        assert any(r.kernel_stamped for r in res)


def test_a_server_that_drops_the_connection_mid_response_ends_the_request_with_an_error():
    async def handler(request):
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(sse(text_chunk("")))
        request.transport.close()
        await asyncio.sleep(0.05)
        return resp

    res = _serve(handler, lambda url: wire.run_wire(url, [_Item(0.0)], lambda i, it: {},
                                                    warm=1, timeout=5))
    assert res[0].ttft is None and res[0].error.startswith("ConnectionError: connection lost")
