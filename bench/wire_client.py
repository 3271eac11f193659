"""A minimal streaming OpenAI client that timestamps bytes as they reach its socket.

The overhead benchmark (serving_overhead.py) compares the mesh with the engine driven
in-process, where a token's time is taken the moment the engine step ends. Its aiohttp load
generator takes a chunk's time only after its event loop has run that request's coroutine:
with 64 streams, every engine step delivers ~64 chunks at once, and a new request's first
chunk waits behind the parsing of the others (~1-2 ms on this 2-core machine, a cost of the
client, not of the mesh). This client takes the time the kernel received the bytes
(``SO_TIMESTAMPNS``, read with ``recvmsg``: the receive time of the newest segment in that read,
so a chunk read together with later data is stamped late, never early). Where the kernel gives
no stamp it takes ``time.perf_counter()`` on entry to ``data_received``, before any parsing.
Both are kept: ``ttft`` (the kernel's, the socket's arrival time) and ``ttft_user`` (when this
process got to the bytes: on a 2-core machine a few hundred microseconds later at the median,
and milliseconds when ~64 streams' chunks of one engine step arrive together).

HTTP/1.1 only, what the frontend speaks: one POST per request on a kept-alive connection from
a pool, a chunked (or length-delimited) ``text/event-stream`` body. A chunk counts as the first
token when it is the first SSE event whose choice carries non-empty text (as serving.py).

    result = await run_wire(base_url, items, make_body)   # per-request ttft / e2e / tokens
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class WireResult:
    index: int
    start: float = 0.0
    ttft: float | None = None  # the first text chunk's bytes reached the socket (kernel stamp)
    ttft_user: float | None = None  # ... and this process read them
    kernel_stamped: bool = False  # ttft is the kernel's stamp (else ttft == ttft_user)
    response_id: str = ""  # the "id" of the first text chunk (the server's request id)
    e2e: float | None = None
    chunks: int = 0
    error: str | None = None


class _Conn(asyncio.Protocol):
    """One kept-alive connection; ``request`` runs one POST on it at a time."""

    def __init__(self):
        self.transport: asyncio.Transport | None = None
        self.res: WireResult | None = None
        self.done: asyncio.Future | None = None  # the result is known ([DONE], error)
        self.ended: asyncio.Future | None = None  # the HTTP response is over (last chunk)
        self.lost = False
        self._buf = bytearray()
        self._head_done = False
        self._chunked = False
        self._left = 0  # bytes left in the current chunk (chunked) or body (length)
        self._body = bytearray()  # de-chunked body not yet split into SSE events

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.lost = True
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError(f"connection lost: {exc}"))
        self._http_end()

    def request(self, raw: bytes, res: WireResult) -> asyncio.Future:
        self.res, self._buf, self._body = res, bytearray(), bytearray()
        self._head_done, self._chunked, self._left = False, False, 0
        self.done = asyncio.get_running_loop().create_future()
        self.ended = asyncio.get_running_loop().create_future()
        res.start = time.perf_counter()
        self.transport.write(raw)
        return self.done

    def data_received(self, data: bytes, arrived: float | None = None) -> None:
        """``arrived``: when the kernel received these bytes, on the perf_counter clock (None:
        not known, the time of this call is used)."""
        now = time.perf_counter()  # first: when this process got to the bytes
        if self.done is None or (self.done.done() and self.ended.done()):
            return  # nothing asked, or the response is over (the pool closes such a conn)
        try:
            self._feed(data, (now if arrived is None else min(arrived, now), now))
        except Exception as exc:  # a malformed answer ends this request, not the run
            self._finish(f"{type(exc).__name__}: {exc}")

    def _feed(self, data: bytes, now: tuple[float, float]) -> None:
        self._buf += data
        if not self._head_done:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
            del self._buf[:end + 4]
            status = head[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, v in
                       (line.split(":", 1) for line in head[1:] if ":" in line)}
            if len(status) < 2 or status[1] != "200":
                self._finish(f"HTTP {' '.join(status[1:])}")
                return
            self._head_done = True
            self._chunked = headers.get("transfer-encoding", "").lower() == "chunked"
            self._left = int(headers.get("content-length", "-1"))
        if self._chunked:
            self._dechunk()
        else:
            take = len(self._buf) if self._left < 0 else min(self._left, len(self._buf))
            self._body += self._buf[:take]
            del self._buf[:take]
            if self._left >= 0:
                self._left -= take
                if self._left == 0:
                    self._http_end()
        self._events(now)

    def _dechunk(self) -> None:
        while True:
            if self._left > 0:
                take = min(self._left, len(self._buf))
                self._body += self._buf[:take]
                del self._buf[:take]
                self._left -= take
                if self._left > 0:
                    return
                self._left = -2  # the chunk's trailing CRLF
            if self._left == -2:
                if len(self._buf) < 2:
                    return
                del self._buf[:2]
                self._left = 0
            end = self._buf.find(b"\r\n")
            if end < 0:
                return
            size = int(bytes(self._buf[:end]).split(b";")[0], 16)
            del self._buf[:end + 2]
            if size == 0:  # the last chunk: the response is over (trailers not expected)
                if self._buf[:2] == b"\r\n":  # its empty trailer line (dropped if it comes later)
                    del self._buf[:2]
                self._body += b"\n\n"
                self._http_end()
                return
            self._left = size

    def _events(self, now: tuple[float, float]) -> None:
        """``now``: (the bytes' arrival, this process's read) on the perf_counter clock."""
        res = self.res
        while True:
            end = self._body.find(b"\n\n")
            if end < 0:
                return
            event = bytes(self._body[:end])
            del self._body[:end + 2]
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    res.e2e = now[0] - res.start
                    self._finish(None)
                    return
                if res.ttft is None:
                    chunk = json.loads(data)
                    if "error" in chunk:
                        self._finish(f"stream error: {chunk['error']}")
                        return
                    choices = chunk.get("choices") or []
                    c = choices[0] if choices else {}
                    if c.get("text") or (c.get("delta") or {}).get("content"):
                        res.ttft = now[0] - res.start
                        res.ttft_user = now[1] - res.start
                        res.kernel_stamped = now[0] != now[1]
                        res.response_id = str(chunk.get("id", ""))
                        res.chunks += 1
                elif b'"text":""' not in data:
                    res.chunks += 1

    def _http_end(self) -> None:
        if self.ended is not None and not self.ended.done():
            self.ended.set_result(None)

    def _finish(self, error: str | None) -> None:
        if self.res is not None and error is not None:
            self.res.error = error
        if self.done is not None and not self.done.done():
            self.done.set_result(None)


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; SCM_TIMESTAMPNS is the same
_CMSG_SPACE = socket.CMSG_SPACE(16)  # struct timespec


class _StampedTransport:
    """The little of ``asyncio.Transport`` that ``_Conn`` uses, over a non-blocking TCP socket
    read with ``recvmsg`` so each read carries the kernel's receive time (``SO_TIMESTAMPNS``,
    CLOCK_REALTIME, turned into the perf_counter clock at the read)."""

    def __init__(self, loop, sock: socket.socket, conn: _Conn):
        self.loop, self.sock, self.conn = loop, sock, conn
        self.closed = False
        conn.connection_made(self)
        loop.add_reader(sock.fileno(), self._readable)

    def write(self, data: bytes) -> None:
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):  # a full send buffer (requests are small: rare)
            self.loop.create_task(self.loop.sock_sendall(self.sock, data[sent:]))

    def _readable(self) -> None:
        for _ in range(64):  # what is there now, bounded
            if self.closed:
                return
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(65536, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._shut(exc)
                return
            if not data:
                self._shut(None)
                return
            self.conn.data_received(data, _arrival(anc))

    def close(self) -> None:
        self._shut(None)

    def _shut(self, exc) -> None:
        """Close once; the protocol hears of it on the next loop turn, as from asyncio."""
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self.loop.call_soon(self.conn.connection_lost, exc)


def _arrival(ancdata) -> float | None:
    """The kernel's receive stamp of a read on the perf_counter clock (None: no stamp)."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack("qq", data[:16])
            return time.perf_counter() - (time.time() - (sec + nsec * 1e-9))
    return None


class WirePool:
    """Kept-alive connections to one host; a request takes an idle one or opens another."""

    def __init__(self, base_url: str):
        u = urlsplit(base_url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.prefix = u.path.rstrip("/")
        self.idle: list[_Conn] = []
        self.all: list[_Conn] = []

    async def warm(self, n: int) -> None:
        """Open ``n`` connections ahead of the run (a production client's pool is warm)."""
        conns = [await self._open() for _ in range(n)]
        self.idle.extend(conns)

    async def _open(self) -> _Conn:
        loop = asyncio.get_running_loop()
        info = (await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM))[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:  # no kernel stamps here: reads are stamped when this process sees them
            pass
        try:
            await loop.sock_connect(sock, info[4])
        except BaseException:
            sock.close()
            raise
        conn = _Conn()
        _StampedTransport(loop, sock, conn)
        self.all.append(conn)
        return conn

    async def post(self, path: str, body: dict, res: WireResult, timeout: float) -> WireResult:
        conn = self.idle.pop() if self.idle else await self._open()
        payload = json.dumps(body).encode()
        raw = (f"POST {self.prefix}{path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
               "Accept: text/event-stream\r\n\r\n").encode() + payload
        try:
            await asyncio.wait_for(conn.request(raw, res), timeout)
            if res.error is None:
                # [DONE] ends the result, not the response: the last chunk may still be on its
                # way, and a request sent before it arrives would read it as its own head
                await asyncio.wait_for(asyncio.shield(conn.ended), 5.0)
        except asyncio.TimeoutError:
            if res.e2e is None:
                res.error = res.error or "TimeoutError"
            conn.lost = True  # an unfinished response: do not reuse the connection
        except Exception as exc:
            res.error = res.error or f"{type(exc).__name__}: {exc}"
        if res.error is None and not conn.lost:
            self.idle.append(conn)
        elif conn.transport is not None:
            conn.transport.close()
        return res

    def close(self) -> None:
        for conn in self.all:
            if conn.transport is not None:
                conn.transport.close()


async def run_wire(base_url: str, items, make_body, *, warm: int = 64,
                   timeout: float = 600.0) -> list[WireResult]:
    """Open loop: item i is posted at its ``arrival_s`` (from the start) with body
    ``make_body(i, item)`` to ``/completions`` under ``base_url``."""
    pool = WirePool(base_url)
    await pool.warm(warm)
    t0 = time.perf_counter()

    async def one(i, item):
        await asyncio.sleep(max(0.0, t0 + item.arrival_s - time.perf_counter()))
        return await pool.post("/completions", make_body(i, item), WireResult(i), timeout)

    try:
        return list(await asyncio.gather(*(one(i, it) for i, it in enumerate(items))))
    finally:
        pool.close()
