"""frontend/server.SSEResponse on a real aiohttp server and a raw socket: nothing reaches the
client before the first chunk, then the headers and that chunk arrive together."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp import web

from llumnix_zmq.frontend.server import SSEResponse

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
