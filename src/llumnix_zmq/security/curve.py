"""CURVE on every inter-service socket when a keys directory is configured.

``MeshSecurity.load(dir, name)`` reads the mesh server keypair and this service's client
keypair; ``start(ctx)`` runs a ZAP authenticator that admits only public keys found in
``dir/authorized``; ``server()`` / ``client()`` give the ``CurveKeys`` for ``make_socket``.
Refused handshakes are logged (socket monitor, ``watch``). No directory: plaintext, as before.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

import zmq
import zmq.asyncio
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from ..transport.sockets import CurveKeys

log = logging.getLogger(__name__)

_AUTH_FAILED = getattr(zmq, "EVENT_HANDSHAKE_FAILED_AUTH", 0x4000)
_NO_DETAIL = getattr(zmq, "EVENT_HANDSHAKE_FAILED_NO_DETAIL", 0x0800)
_PROTOCOL = getattr(zmq, "EVENT_HANDSHAKE_FAILED_PROTOCOL", 0x2000)


@dataclass
class MeshSecurity:
    directory: str
    name: str
    server_public: bytes
    server_secret: bytes
    public: bytes
    secret: bytes
    authenticator: object = None

    @classmethod
    def load(cls, directory: str, name: str) -> "MeshSecurity":
        spub, ssec = zmq.auth.load_certificate(os.path.join(directory, "server.key_secret"))
        own = os.path.join(directory, f"{name}.key_secret")
        if not os.path.exists(own):
            raise SystemExit(f"no CURVE key for '{name}' in {directory} "
                             f"(make it: llumnix-zmq keys --dir {directory} --names {name})")
        pub, sec = zmq.auth.load_certificate(own)
        return cls(directory, name, spub, ssec, pub, sec)

    def start(self, ctx) -> None:
        from zmq.auth.asyncio import AsyncioAuthenticator

        auth = AsyncioAuthenticator(ctx)
        auth.start()
        auth.configure_curve(domain="*", location=os.path.join(self.directory, "authorized"))
        self.authenticator = auth

    def stop(self) -> None:
        if self.authenticator is not None:
            self.authenticator.stop()

    def server(self) -> CurveKeys:
        return CurveKeys(self.server_public, self.server_secret, None)

    def client(self) -> CurveKeys:
        return CurveKeys(self.public, self.secret, self.server_public)


def security_from(cfg, name: str) -> MeshSecurity | None:
    return MeshSecurity.load(cfg.curve_dir, name) if getattr(cfg, "curve_dir", "") else None


async def watch(sock, label: str) -> None:
    """Log refused handshakes on a bound socket until cancelled."""
    mon = sock.get_monitor_socket(_AUTH_FAILED | _NO_DETAIL | _PROTOCOL)
    if not isinstance(mon, zmq.asyncio.Socket):  # a plain socket's monitor: read it async
        mon = zmq.asyncio.Socket.from_socket(mon)
    try:
        while True:
            evt = await recv_monitor_message(mon)
            log.warning("%s: refused a peer (%s) at %s", label, _event_name(evt["event"]),
                        evt.get("endpoint", b"").decode(errors="replace"))
    except (asyncio.CancelledError, zmq.ZMQError):
        pass
    finally:
        try:
            sock.disable_monitor()
        except zmq.ZMQError:
            pass
        mon.close(linger=0)


def _event_name(event: int) -> str:
    return {_AUTH_FAILED: "authentication failed", _NO_DETAIL: "handshake failed",
            _PROTOCOL: "protocol error"}.get(event, str(event))
