"""frontend/sse: SSEResponse on a real aiohttp server and a raw socket (nothing reaches the
client before the first chunk, then the headers and that chunk arrive together); Chunks' text
template gives the same bytes as the general builder, in both layouts."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from aiohttp import web

from llumnix_zmq.frontend.sse import Chunks, SSEResponse

pytestmark = pytest.mark.timeout(30)


def test_headers_leave_with_the_first_chunk():
    async def main():
        release = asyncio.Event()

        async def handler(request):
            resp = SSEResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await release.wait()
            await resp.write(b"data: first\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp

        app = web.Application()
        app.router.add_post("/s", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.setblocking(False)
        try:
            await loop.sock_sendall(sock, b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            with pytest.raises(asyncio.TimeoutError):  # prepared, but nothing sent yet
                await asyncio.wait_for(loop.sock_recv(sock, 4096), 0.3)
            release.set()
            got = await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)
            assert got.startswith(b"HTTP/1.1 200 OK\r\n")
            head, _, body = got.partition(b"\r\n\r\n")
            assert b"Transfer-Encoding: chunked" in head
            assert body.startswith(b"d\r\ndata: first\n\n\r\n")  # the same segment
        finally:
            sock.close()
            await runner.cleanup()

    asyncio.run(main())


BASE = {"id": "cmpl-0123", "object": "text_completion", "created": 1700000000, "model": "sim"}
TEXTS = ["A", " the", "", 'quote " and \\ backslash', "line\nbreak\ttab", "caf\u00e9 \u4e2d\u6587",
         "\U0001f600", "\x00nul\x1f", "</script>", "\ud800"]


@pytest.mark.parametrize("chat", [False, True], ids=["completion", "chat"])
def test_text_chunks_are_the_general_builders_bytes(chat):
    base = {**BASE, "object": "chat.completion.chunk"} if chat else BASE
    chunks = Chunks(base, chat)
    assert chunks._head  # the template is in use
    for text in TEXTS:
        assert chunks.text(text) == chunks.chunk(text, None)


def test_text_chunk_exact_layout():
    chunk = Chunks(BASE, False).text("Hi")
    assert chunk == (b'data: {"id": "cmpl-0123", "object": "text_completion", "created": '
                     b'1700000000, "model": "sim", "choices": [{"index": 0, "text": "Hi", '
                     b'"logprobs": null, "finish_reason": null}]}\n\n')
    chat = Chunks({**BASE, "object": "chat.completion.chunk"}, True)
    assert json.loads(chat.text("Hi")[6:]) == {
        **BASE, "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": "Hi"}, "logprobs": None,
                     "finish_reason": None}]}
    assert json.loads(chat.role()[6:])["choices"][0]["delta"] == {"role": "assistant",
                                                                  "content": ""}


def test_no_template_where_chunks_carry_more_than_text():
    class Ids:
        prompt_token_ids = [256, 72]

        def __init__(self):
            self.batches = [[105], [106, 107]]

        def take_ids(self):
            return self.batches.pop(0)

    chunks = Chunks(BASE, False, return_token_ids=True, stream=Ids())
    first, second = (json.loads(c[6:])["choices"][0] for c in (chunks.text("a"), chunks.text("b")))
    assert (first["prompt_token_ids"], first["token_ids"]) == ([256, 72], [105])
    assert "prompt_token_ids" not in second and second["token_ids"] == [106, 107]
    weird = Chunks({**BASE, "model": "\x00"}, False)  # the probe would be ambiguous
    assert not weird._head and weird.text("x") == weird.chunk("x", None)
