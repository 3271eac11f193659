"""Sockets, RpcClient and Router over real ZeroMQ sockets (ipc:// in tmp_path, tcp loopback)."""

from __future__ import annotations

import asyncio
import time
import re

import pytest
import zmq
import zmq.asyncio

from llumnix_zmq.protocol import messages as m
from llumnix_zmq.protocol.codec import decode, encode
from llumnix_zmq.protocol.messages import ErrorCode
from llumnix_zmq.transport.dispatcher import Router
from llumnix_zmq.transport.rpc import RpcClient, RpcError, reply_key, send_nowait, send_routed
from llumnix_zmq.transport.sockets import DEFAULT_HWM, DEFAULT_MAX_MSG, bound_address, make_socket


@pytest.fixture
async def ctx():
    context = zmq.asyncio.Context()
    yield context
    context.destroy(linger=0)


def ipc(tmp_path, name: str) -> str:
    return f"ipc://{tmp_path}/{name}.sock"


# --------------------------------------------------------------------------- make_socket


async def test_make_socket_sets_options(ctx, tmp_path):
    sock = make_socket(ctx, zmq.ROUTER, ipc(tmp_path, "opts"), bind=True, identity=b"me",
                       hwm=123, linger_ms=7, max_msg_size=4096)
    assert sock.getsockopt(zmq.SNDHWM) == 123
    assert sock.getsockopt(zmq.RCVHWM) == 123
    assert sock.getsockopt(zmq.LINGER) == 7
    assert sock.getsockopt(zmq.MAXMSGSIZE) == 4096
    assert sock.getsockopt(zmq.IDENTITY) == b"me"
    assert sock.getsockopt(zmq.TYPE) == zmq.ROUTER
    sock.close()


async def test_make_socket_defaults(ctx):
    sock = make_socket(ctx, zmq.DEALER, "tcp://127.0.0.1:1", bind=False)
    assert sock.getsockopt(zmq.SNDHWM) == DEFAULT_HWM == 100_000
    assert sock.getsockopt(zmq.RCVHWM) == DEFAULT_HWM
    assert sock.getsockopt(zmq.LINGER) == 0
    assert sock.getsockopt(zmq.MAXMSGSIZE) == DEFAULT_MAX_MSG == 64 << 20
    assert sock.getsockopt(zmq.IPV6) == 0
    sock.close()


async def test_make_socket_ipv6_address_turns_on_ipv6(ctx):
    sock = make_socket(ctx, zmq.DEALER, "tcp://[::1]:1", bind=False)
    assert sock.getsockopt(zmq.IPV6) == 1
    sock.close()


async def test_bound_address_after_port_zero(ctx, tmp_path):
    sock = make_socket(ctx, zmq.ROUTER, "tcp://127.0.0.1:0", bind=True)
    addr = bound_address(sock)
    match = re.fullmatch(r"tcp://127\.0\.0\.1:(\d+)", addr)
    assert match and int(match.group(1)) > 0
    path = ipc(tmp_path, "bound")
    sock2 = make_socket(ctx, zmq.PULL, path, bind=True)
    assert bound_address(sock2) == path
    sock.close()
    sock2.close()


# --------------------------------------------------------------------------- RpcClient


class EchoServer:
    """A ROUTER that answers ListInstances, fails DispatchQuery, ignores AbortRequest and holds
    MigrateCommand replies until two have arrived (then answers them in reverse order)."""

    def __init__(self, ctx, address: str):
        self.sock = make_socket(ctx, zmq.ROUTER, address, bind=True)
        self.address = bound_address(self.sock)
        self.seen: list[m.Message] = []
        self.identities: list[bytes] = []
        self.held: list[tuple[bytes, m.MigrateCommand]] = []
        self.task = asyncio.get_running_loop().create_task(self.serve())

    async def serve(self):
        while True:
            identity, *frames = await self.sock.recv_multipart()
            msg, _ = decode(frames)
            self.seen.append(msg)
            self.identities.append(identity)
            if isinstance(msg, m.ListInstances):
                await send_routed(self.sock, identity, m.InstanceTable(msg.query_id, (), "ep"))
            elif isinstance(msg, m.DispatchQuery):
                await send_routed(self.sock, identity, m.ErrorReply(
                    ErrorCode.NO_INSTANCE, "no live instance", msg.request_id, msg.TAG,
                    msg.query_id))
            elif isinstance(msg, m.MigrateCommand):
                self.held.append((identity, msg))
                if len(self.held) == 2:
                    for ident, cmd in reversed(self.held):
                        await send_routed(self.sock, ident, m.MigrateCommandReply(
                            cmd.command_id, True, (cmd.reason,)))

    async def close(self):
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.sock.close()


@pytest.fixture
async def server(ctx, tmp_path):
    srv = EchoServer(ctx, ipc(tmp_path, "rpc"))
    yield srv
    await srv.close()


@pytest.fixture
async def client(ctx, server):
    got: list[tuple[m.Message, list]] = []
    sock = make_socket(ctx, zmq.DEALER, server.address, bind=False, identity=b"client-1")
    rpc = RpcClient(sock, on_message=lambda msg, raw: got.append((msg, raw)))
    rpc.got = got
    rpc.start()
    yield rpc
    await rpc.close()


async def test_call_gets_the_reply_matched_by_query_id(client, server):
    reply = await client.call(lambda q: m.ListInstances(q), timeout=5)
    assert reply == m.InstanceTable(1, (), "ep")
    reply = await client.call(lambda q: m.ListInstances(q), timeout=5)
    assert reply == m.InstanceTable(2, (), "ep")
    assert server.seen == [m.ListInstances(1), m.ListInstances(2)]
    assert server.identities == [b"client-1", b"client-1"]
    assert client._pending == {}
    assert client.got == []


async def test_concurrent_calls_answered_out_of_order(client, server):
    first, second = await asyncio.gather(
        client.call(lambda q: m.MigrateCommand(q, "a", "b", reason="first"), timeout=5),
        client.call(lambda q: m.MigrateCommand(q, "a", "b", reason="second"), timeout=5),
    )
    assert first == m.MigrateCommandReply(1, True, ("first",))
    assert second == m.MigrateCommandReply(2, True, ("second",))


async def test_call_timeout_raises_rpc_error_timeout(client, server):
    with pytest.raises(RpcError) as info:
        await client.call(lambda q: m.AbortRequest(f"ignored-{q}"), timeout=0.1)
    assert info.value.code is ErrorCode.TIMEOUT
    assert info.value.message == "no reply within 0.100s"
    assert str(info.value) == "TIMEOUT: no reply within 0.100s"
    assert client._pending == {}
    # the client still works afterwards
    reply = await client.call(lambda q: m.ListInstances(q), timeout=5)
    assert reply == m.InstanceTable(2, (), "ep")


async def test_error_reply_raises_rpc_error_with_its_code(client, server):
    with pytest.raises(RpcError) as info:
        await client.call(lambda q: m.DispatchQuery(q, "req-1", 10), timeout=5)
    assert info.value.code is ErrorCode.NO_INSTANCE
    assert info.value.message == "no live instance"
    assert client._pending == {}


async def test_unsolicited_and_late_messages_go_to_on_message(client, server):
    await client.call(lambda q: m.ListInstances(q), timeout=5)  # the server now knows us
    order = m.ScaleOrder("w1", True, False)
    assert await send_routed(server.sock, b"client-1", order, [b"raw-frame"])
    # a reply whose query id nobody waits for is not a reply to anybody
    assert await send_routed(server.sock, b"client-1", m.InstanceTable(999, ()))
    # a malformed frame from the peer is dropped and the loop keeps going
    await server.sock.send_multipart([b"client-1", b"\x00\x08", b"\xc1"])
    await send_routed(server.sock, b"client-1", m.FrontendGone("tcp://fe:1"))
    for _ in range(200):
        if len(client.got) == 3:
            break
        await asyncio.sleep(0.01)
    assert [msg for msg, _ in client.got] == [order, m.InstanceTable(999, ()),
                                             m.FrontendGone("tcp://fe:1")]
    assert [bytes(f.buffer) for f in client.got[0][1]] == [b"raw-frame"]


async def test_close_fails_pending_calls(ctx, tmp_path):
    srv_sock = make_socket(ctx, zmq.ROUTER, ipc(tmp_path, "silent"), bind=True)
    rpc = RpcClient(make_socket(ctx, zmq.DEALER, bound_address(srv_sock), bind=False))
    rpc.start()
    call = asyncio.ensure_future(rpc.call(lambda q: m.ListInstances(q), timeout=5))
    await asyncio.sleep(0.05)
    await rpc.close()
    with pytest.raises(RpcError) as info:
        await call
    assert info.value.code is ErrorCode.INTERNAL
    assert info.value.message == "client closed"
    srv_sock.close()


def test_reply_key():
    assert reply_key(m.ListInstances(5)) == 5
    assert reply_key(m.MigrateCommandReply(9, True)) == 9
    assert reply_key(m.ErrorReply(ErrorCode.STALE, "", query_id=3)) == 3
    assert reply_key(m.ErrorReply(ErrorCode.STALE, "")) is None  # 0 is "no query"
    assert reply_key(m.ScaleOrder("w", False)) is None


# --------------------------------------------------------------------------- send helpers


async def test_send_nowait_dealer_without_peer(ctx, tmp_path):
    # A bound DEALER with no peer has no pipe: EAGAIN at once, nothing queued.
    bound = make_socket(ctx, zmq.DEALER, ipc(tmp_path, "lonely"), bind=True, hwm=1)
    assert RpcClient(bound).send_nowait(m.ListInstances(1)) is False
    # A connecting DEALER gets its pipe at connect() (no ZMQ_IMMEDIATE), so with HWM=1 the
    # first message is queued for the absent peer and the next one finds the pipe full.
    connecting = make_socket(ctx, zmq.DEALER, ipc(tmp_path, "nobody-listens"), bind=False, hwm=1)
    results = [send_nowait(connecting, encode(m.ListInstances(i))) for i in range(1, 6)]
    assert results == [True, False, False, False, False]
    bound.close()
    connecting.close()


async def test_send_nowait_on_a_sync_socket(tmp_path):
    ctx = zmq.Context()
    try:
        pull = make_socket(ctx, zmq.PULL, ipc(tmp_path, "sync"), bind=True)
        push = make_socket(ctx, zmq.PUSH, bound_address(pull), bind=False)
        assert send_nowait(push, encode(m.Deregister("w", "bye"))) is True
        assert pull.poll(2000)
        assert decode(pull.recv_multipart())[0] == m.Deregister("w", "bye")
    finally:
        ctx.destroy(linger=0)


async def test_send_routed_to_unknown_identity_returns_false(ctx):
    router = make_socket(ctx, zmq.ROUTER, "tcp://127.0.0.1:0", bind=True)
    assert await send_routed(router, b"nobody", m.ListInstances(1)) is False
    dealer = make_socket(ctx, zmq.DEALER, bound_address(router), bind=False, identity=b"d1")
    await dealer.send_multipart(encode(m.ListInstances(1)))
    assert await router.poll(5000)
    identity, *_ = await router.recv_multipart()
    assert identity == b"d1"
    assert await send_routed(router, b"d1", m.InstanceTable(1, ())) is True
    assert await dealer.poll(5000)
    assert decode(await dealer.recv_multipart())[0] == m.InstanceTable(1, ())


async def test_frame_over_max_msg_size_drops_the_peer(ctx, tmp_path):
    receiver = make_socket(ctx, zmq.ROUTER, ipc(tmp_path, "small"), bind=True, max_msg_size=1000)
    sender = make_socket(ctx, zmq.DEALER, bound_address(receiver), bind=False, identity=b"big")
    await sender.send_multipart(encode(m.Deregister("w", "x" * 2000)))
    assert await receiver.poll(300) == 0  # never delivered
    # a well-behaved peer on the same receiver is unaffected
    other = make_socket(ctx, zmq.DEALER, bound_address(receiver), bind=False, identity=b"ok")
    await other.send_multipart(encode(m.Deregister("w", "fine")))
    assert await receiver.poll(5000)
    identity, *frames = await receiver.recv_multipart()
    assert identity in (b"big", b"ok")  # "big" may have reconnected meanwhile; never its frame
    assert decode(frames)[0] != m.Deregister("w", "x" * 2000)


# --------------------------------------------------------------------------- Router


def router_socket(ctx, plain: bool, address: str):
    """A bound ROUTER: asyncio, or plain (the Router then receives from the fd itself)."""
    return make_socket(zmq.Context.shadow(ctx.underlying) if plain else ctx, zmq.ROUTER,
                       address, bind=True)


@pytest.mark.parametrize("plain", [False, True], ids=["asyncio", "plain"])
async def test_router_serves_real_socket_and_survives_bad_input(ctx, tmp_path, plain):
    def on_list(identity, msg, raw):
        return m.InstanceTable(msg.query_id, (), identity.decode())

    async def on_dispatch(identity, msg, raw):
        raise KeyError(msg.request_id)

    sock = router_socket(ctx, plain, ipc(tmp_path, "router"))
    router = Router(sock, {m.ListInstances: on_list, m.DispatchQuery: on_dispatch}, "sched")
    task = asyncio.get_running_loop().create_task(router.serve())
    dealer = make_socket(ctx, zmq.DEALER, bound_address(sock), bind=False, identity=b"peer-7")

    async def roundtrip(frames):
        await dealer.send_multipart(frames)
        assert await dealer.poll(5000)
        return decode(await dealer.recv_multipart())[0]

    try:
        assert await roundtrip([b"\x00\x08", b"\xc1"]) == m.ErrorReply(
            ErrorCode.MALFORMED, "bad msgpack: ", "", 8)
        assert await roundtrip([b"\x00\x63", b"\x90"]) == m.ErrorReply(
            ErrorCode.UNKNOWN_TYPE, "unknown message type 99", "", 99)
        assert await roundtrip(encode(m.Deregister("w"))) == m.ErrorReply(
            ErrorCode.UNKNOWN_TYPE, "sched does not accept Deregister", "", m.Deregister.TAG)
        assert await roundtrip(encode(m.DispatchQuery(4, "req-x", 1))) == m.ErrorReply(
            ErrorCode.INTERNAL, "KeyError: 'req-x'", "", m.DispatchQuery.TAG, 4)
        assert await roundtrip(encode(m.ListInstances(5))) == m.InstanceTable(5, (), "peer-7")
        assert router.errors == 4
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if plain:
            sock.close(linger=0)


@pytest.mark.parametrize("plain", [False, True], ids=["asyncio", "plain"])
async def test_router_send_to_gone_peer_returns_false(ctx, plain):
    sock = router_socket(ctx, plain, "tcp://127.0.0.1:0")
    router = Router(sock, {}, "r")
    assert await router.send(b"ghost", m.ListInstances(1)) is False
    sock.close(linger=0)


async def test_plain_router_handles_in_order_and_a_send_does_not_strand_a_message(ctx, tmp_path):
    """Handlers run one at a time in arrival order: messages that arrive while a handler is
    suspended wait for it and are then all served. A message that lands while the loop is busy
    and a send goes out on the same socket before the loop looks (a send may take the fd's
    signal; Router.send wakes the receive loop to look again) is served too."""
    seen, gate = [], asyncio.Event()

    async def on_abort(identity, msg, raw):
        seen.append(msg.request_id)
        if msg.request_id == "slow":
            await gate.wait()
        return None

    sock = router_socket(ctx, True, ipc(tmp_path, "plain"))
    router = Router(sock, {m.AbortRequest: on_abort}, "w")
    task = asyncio.get_running_loop().create_task(router.serve())
    dealer = make_socket(ctx, zmq.DEALER, bound_address(sock), bind=False, identity=b"fe")
    try:
        await dealer.send_multipart(encode(m.AbortRequest("slow")))
        for _ in range(200):
            if seen:
                break
            await asyncio.sleep(0.005)
        for rid in ("a", "b"):
            await dealer.send_multipart(encode(m.AbortRequest(rid)))
        await asyncio.sleep(0.05)
        assert seen == ["slow"]  # one at a time: "a" and "b" wait for "slow"
        gate.set()
        for _ in range(200):
            if len(seen) == 3:
                break
            await asyncio.sleep(0.005)
        assert seen == ["slow", "a", "b"]
        # the receive loop waits on the fd; a message lands, then a send on the same socket
        # processes the socket's commands before the loop looks
        await dealer.send_multipart(encode(m.AbortRequest("c")))
        time.sleep(0.05)  # (blocking on purpose: the message is queued, the loop not run)
        assert await router.send(b"fe", m.ListInstances(3)) is True
        for _ in range(200):
            if len(seen) == 4:
                break
            await asyncio.sleep(0.005)
        assert seen == ["slow", "a", "b", "c"]
        assert await dealer.poll(5000)
        assert decode(await dealer.recv_multipart())[0] == m.ListInstances(3)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sock.close(linger=0)
