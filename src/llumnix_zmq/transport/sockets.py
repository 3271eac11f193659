"""The one socket factory (vLLM's ``make_zmq_socket`` idea): HWM, linger, size caps, bind or
connect, and optional CURVE, set in one place."""

from __future__ import annotations

from dataclasses import dataclass

import zmq
import zmq.asyncio

DEFAULT_HWM = 100_000
DEFAULT_MAX_MSG = 64 << 20  # bytes; ZMQ_MAXMSGSIZE drops peers sending larger frames


def plain_context(ctx: zmq.asyncio.Context | zmq.Context) -> zmq.Context:
    """A plain (non-asyncio) context on the same ZeroMQ context: its sockets are read from the
    loop's readiness callback (transport/reader.py, dispatcher.Router) or sent on without a
    Future (worker/outputs.py)."""
    return zmq.Context.shadow(ctx.underlying) if isinstance(ctx, zmq.asyncio.Context) else ctx


@dataclass(frozen=True)
class CurveKeys:
    """This side's keypair and, for clients, the server's public key (z85 bytes)."""

    public: bytes
    secret: bytes
    server_public: bytes | None = None


def make_socket(
    ctx: zmq.asyncio.Context | zmq.Context,
    kind: int,
    address: str,
    *,
    bind: bool,
    identity: bytes | None = None,
    hwm: int = DEFAULT_HWM,
    linger_ms: int = 0,
    max_msg_size: int = DEFAULT_MAX_MSG,
    curve: CurveKeys | None = None,
):
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.MAXMSGSIZE, max_msg_size)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    if kind == zmq.ROUTER:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unknown peer -> EHOSTUNREACH, not a silent drop
    if address.startswith("tcp://[") or "::" in address:
        sock.setsockopt(zmq.IPV6, 1)
    if curve is not None:
        sock.curve_publickey = curve.public
        sock.curve_secretkey = curve.secret
        if bind and curve.server_public is None:
            sock.curve_server = True
        else:
            sock.curve_serverkey = curve.server_public or curve.public
    try:
        if bind:
            sock.bind(address)
        else:
            sock.connect(address)
    except zmq.ZMQError:  # e.g. a malformed address from a peer: do not leak the socket
        sock.close(linger=0)
        raise
    return sock


def bound_address(sock) -> str:
    """The concrete endpoint after binding to a wildcard port (tcp://127.0.0.1:0)."""
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)
