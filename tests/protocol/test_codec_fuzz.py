"""Property tests: ``decode`` returns a valid message or raises ``DecodeError`` — nothing else —
for any frames; and ``Router.handle_frames`` never raises, answering bad input with an
``ErrorReply``. Messages are generated from the schema itself, so a new message type or field
is fuzzed without touching this file."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import struct
import typing

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llumnix_zmq.protocol import messages as m
from llumnix_zmq.protocol.codec import DecodeError, decode, encode
from llumnix_zmq.protocol.messages import ALL_MESSAGES, BY_TAG, ErrorCode, ErrorReply
from llumnix_zmq.protocol.schema import DEFAULT_LIMITS, Limits, SchemaError, Struct, _encoder
from llumnix_zmq.transport.dispatcher import Router
from llumnix_zmq.transport.rpc import reply_key

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DECODE_CODES = {ErrorCode.MALFORMED, ErrorCode.UNKNOWN_TYPE, ErrorCode.TOO_LARGE}
TAGS = sorted(BY_TAG)


# --------------------------------------------------------------------------- strategies


def for_annotation(ann) -> st.SearchStrategy:
    origin = typing.get_origin(ann)
    if origin is typing.Union:
        (inner,) = [a for a in typing.get_args(ann) if a is not type(None)]
        return st.none() | for_annotation(inner)
    if origin is tuple:
        return st.lists(for_annotation(typing.get_args(ann)[0]), max_size=4).map(tuple)
    if isinstance(ann, type) and issubclass(ann, Struct):
        return for_struct(ann)
    if isinstance(ann, type) and issubclass(ann, enum.IntEnum):
        return st.sampled_from(list(ann))
    return {
        bool: st.booleans(),
        int: st.integers(-(1 << 63), (1 << 64) - 1),
        float: st.floats(allow_nan=False),
        str: st.text(max_size=12),
        bytes: st.binary(max_size=12),
    }[ann]


def for_struct(cls) -> st.SearchStrategy:
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{name: for_annotation(hints[name]) for name, _, _ in cls.spec()})


messages = st.sampled_from(ALL_MESSAGES).flatmap(for_struct)

msgpack_leaves = (
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.floats()
    | st.text(max_size=8) | st.binary(max_size=8)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4))
)
msgpack_values = st.recursive(
    msgpack_leaves,
    lambda kids: (st.lists(kids, max_size=6)
                  | st.dictionaries(st.text(max_size=4), kids, max_size=4)),
    max_leaves=25,
)


def tag_bytes(tag: int) -> bytes:
    return struct.pack(">H", tag)


@st.composite
def confused_frames(draw):
    """A known tag with a msgpack body of arbitrary (usually wrong) shape."""
    tag = draw(st.sampled_from(TAGS))
    if draw(st.booleans()):
        body = draw(st.lists(msgpack_values, max_size=12))
    else:
        body = draw(msgpack_values)
    return [tag_bytes(tag), msgpack.packb(body, use_bin_type=True)]


@st.composite
def valid_with_one_position_confused(draw):
    """A valid message whose wire array has one field replaced by an arbitrary value."""
    msg = draw(messages)
    wire = msg.to_wire()
    i = draw(st.integers(0, len(wire) - 1))
    wire[i] = draw(msgpack_values)
    return [tag_bytes(msg.TAG), msgpack.packb(wire, use_bin_type=True)]


@st.composite
def truncated(draw):
    tag, body = encode(draw(messages))
    cut = draw(st.integers(0, len(body) - 1))
    return [tag, body[:cut]]


@st.composite
def one_byte_flipped(draw):
    frames = encode(draw(messages))
    joined = bytearray(frames[0] + frames[1])
    i = draw(st.integers(0, len(joined) - 1))
    joined[i] ^= draw(st.integers(1, 255))
    return [bytes(joined[:2]), bytes(joined[2:])]


random_frames = st.lists(st.binary(max_size=40), max_size=5)
any_frames = (random_frames | truncated() | one_byte_flipped() | confused_frames()
              | valid_with_one_position_confused())


# --------------------------------------------------------------------------- decode


def check_decode(frames):
    """The decode contract; returns the message or the DecodeError."""
    try:
        msg, raw = decode(frames)
    except DecodeError as exc:
        assert exc.code in DECODE_CODES
        assert isinstance(exc.message, str)
        return exc
    assert type(msg) in ALL_MESSAGES
    assert raw == list(frames[2:])
    # a valid instance: it re-validates and re-encodes to a stable form
    again = encode(msg)
    assert encode(decode(again)[0]) == again
    assert type(msg).from_wire(msg.to_wire()) == msg or _has_nan(msg)
    return msg


def _has_nan(msg) -> bool:
    return any(v != v for v in _floats(msg.to_wire()))


def _floats(value):
    if isinstance(value, float):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _floats(v)


@FUZZ
@given(messages)
def test_generated_messages_round_trip(msg):
    frames = encode(msg, [b"raw"])
    out, raw = decode(frames)
    assert out == msg
    assert raw == [b"raw"]


@FUZZ
@given(random_frames)
def test_random_bytes(frames):
    check_decode(frames)


@FUZZ
@given(truncated())
def test_truncated_valid_encodings_are_malformed(frames):
    result = check_decode(frames)
    assert isinstance(result, DecodeError)
    assert result.code is ErrorCode.MALFORMED


@FUZZ
@given(one_byte_flipped())
def test_one_byte_flipped(frames):
    check_decode(frames)


@FUZZ
@given(confused_frames())
def test_type_confused_values_under_every_tag(frames):
    check_decode(frames)


@FUZZ
@given(valid_with_one_position_confused())
def test_one_field_confused(frames):
    check_decode(frames)


@FUZZ
@given(st.sampled_from(TAGS), msgpack_values)
def test_arbitrary_top_level_value(tag, value):
    check_decode([tag_bytes(tag), msgpack.packb(value, use_bin_type=True)])


# --------------------------------------------------------------------------- fast path


def _structs(cls=Struct):
    for sub in cls.__subclasses__():
        yield sub
        yield from _structs(sub)


def _decline(raw, limits, depth):
    raise ValueError("fast path off")


@contextlib.contextmanager
def checks_only():
    """Every struct decodes through the per-field checkers alone (no generated fast path)."""
    saved = {c: c.__dict__.get("_from_wire_cache") for c in _structs()}
    for c in saved:
        c._from_wire_cache = _decline
    try:
        yield
    finally:
        for c, fast in saved.items():
            if fast is None:
                del c._from_wire_cache
            else:
                c._from_wire_cache = fast


def same_outcome(cls, raw, limits=DEFAULT_LIMITS):
    """``from_wire`` (generated fast path, else the checked one) and the checks alone accept
    the same input, build equal objects and fail with the same message."""
    try:
        with checks_only():
            want = cls.from_wire(raw, limits)
    except (SchemaError, TypeError, ValueError) as exc:
        with pytest.raises(type(exc)) as got:
            cls.from_wire(raw, limits)
        assert str(got.value) == str(exc)
        return
    got = cls.from_wire(raw, limits)
    assert type(got) is cls
    assert got == want or _has_nan(want)
    assert got.__dict__.keys() == want.__dict__.keys()
    for name, value in want.__dict__.items():  # same types too (tuples, enum members, floats)
        assert type(got.__dict__[name]) is type(value)


def _ints_for_floats(value):
    """The wire form with each finite float sent as an int (a peer may: it decodes as float)."""
    if isinstance(value, float) and value == value and abs(value) < 1e18:
        return int(value)
    if isinstance(value, list):
        return [_ints_for_floats(v) for v in value]
    return value


# each cap tight (0..16) or out of the way, independently
cap = st.integers(0, 16) | st.just(1 << 20)
limits = st.builds(Limits, max_str=cap, max_bytes=cap, max_list=cap, max_depth=st.integers(0, 9))


@FUZZ
@given(messages, st.booleans(), limits)
def test_fast_path_builds_what_the_checks_build(msg, ints, lim):
    wire = msgpack.unpackb(msgpack.packb(msg.to_wire(), use_bin_type=True))
    if ints:
        wire = _ints_for_floats(wire)
    same_outcome(type(msg), wire)
    same_outcome(type(msg), wire, lim)


@st.composite
def wire_with_one_position_confused(draw):
    msg = draw(messages)
    wire = msgpack.unpackb(msgpack.packb(msg.to_wire(), use_bin_type=True))
    node = wire  # walk down into nested arrays (structs, lists of structs) at random
    while True:
        i = draw(st.integers(0, len(node) - 1))
        if isinstance(node[i], list) and node[i] and draw(st.booleans()):
            node = node[i]
            continue
        node[i] = draw(msgpack_values.filter(lambda v: not isinstance(v, msgpack.ExtType)))
        return type(msg), wire


@FUZZ
@given(wire_with_one_position_confused(), limits, st.integers(0, 16))
def test_fast_path_rejects_what_the_checks_reject(case, lim, cut):
    cls, wire = case
    same_outcome(cls, wire, lim)
    same_outcome(cls, wire[:cut])  # short arrays: missing optional fields, too few fields


# --------------------------------------------------------------------------- Router


class FakeSock:
    """What Router touches of a ROUTER socket: ``send_multipart``."""

    def __init__(self):
        self.sent: list[list] = []

    async def send_multipart(self, frames, copy=True):
        self.sent.append(list(frames))


class Boom(RuntimeError):
    pass


def make_router():
    calls: list[tuple[bytes, m.Message, list]] = []

    def list_instances(identity, msg, raw):  # sync handler with a reply
        calls.append((identity, msg, raw))
        return m.InstanceTable(msg.query_id, ())

    async def report(identity, msg, raw):  # async handler, no reply
        calls.append((identity, msg, raw))
        return None

    async def dispatch(identity, msg, raw):  # a handler bug
        calls.append((identity, msg, raw))
        raise Boom(f"bad {msg.request_id}")

    handlers = {m.ListInstances: list_instances, m.LoadReport: report, m.DispatchQuery: dispatch}
    sock = FakeSock()
    return Router(sock, handlers, "fuzz"), sock, calls


def expected_reply(frames) -> tuple[m.Message | None, bool]:
    """What the router must send back for ``frames`` and whether a handler runs."""
    try:
        msg, _ = decode(frames)
    except DecodeError as exc:
        return exc.reply(), False
    if isinstance(msg, m.ListInstances):
        return m.InstanceTable(msg.query_id, ()), True
    if isinstance(msg, m.LoadReport):
        return None, True
    if isinstance(msg, m.DispatchQuery):
        return ErrorReply(ErrorCode.INTERNAL, f"Boom: bad {msg.request_id}", ref_tag=msg.TAG,
                          query_id=reply_key(msg) or 0), True
    return ErrorReply(ErrorCode.UNKNOWN_TYPE, f"fuzz does not accept {type(msg).__name__}",
                      ref_tag=msg.TAG, query_id=reply_key(msg) or 0), False


def run_router(batch):
    router, sock, calls = make_router()

    async def go():
        for frames in batch:
            await router.handle_frames([b"peer", *frames])
        # the loop is still alive: a good query after all of that is answered
        await router.handle_frames([b"peer", *encode(m.ListInstances(424242))])

    asyncio.run(go())
    return router, sock, calls


@FUZZ
@given(st.lists(any_frames | st.sampled_from(ALL_MESSAGES).flatmap(for_struct).map(encode),
                min_size=1, max_size=4))
def test_router_never_raises_and_answers_bad_input(batch):
    router, sock, calls = run_router(batch)
    want_sent, want_calls, want_errors = [], 0, 0
    for frames in batch:
        reply, handled = expected_reply(frames)
        want_calls += handled
        if isinstance(reply, ErrorReply):
            want_errors += 1
        if reply is not None:
            want_sent.append([b"peer", *encode(reply)])
    want_sent.append([b"peer", *encode(m.InstanceTable(424242, ()))])
    assert sock.sent == want_sent
    assert len(calls) == want_calls + 1
    assert router.errors == want_errors
    for frames in sock.sent:  # every answer is itself a valid message
        decode(frames[1:])


def test_router_malformed_and_unknown_get_error_replies():
    batch = [
        [b"\x00", b"\x90"],  # bad tag length
        [m.ListInstances.TAG.to_bytes(2, "big"), b"\xc1"],  # garbage body
        [b"\x12\x34", b"\x90"],  # unknown tag
        encode(m.AbortRequest("r")),  # valid, no handler
        encode(m.DispatchQuery(77, "r9", 3)),  # handler raises
        encode(m.LoadReport("w", 1, m.InstanceLoad(1, 0, 0, 0))),  # handled, no reply
    ]
    router, sock, calls = run_router(batch)
    replies = [decode(frames[1:])[0] for frames in sock.sent]
    assert [r.code for r in replies[:5]] == [ErrorCode.MALFORMED, ErrorCode.MALFORMED,
                                             ErrorCode.UNKNOWN_TYPE, ErrorCode.UNKNOWN_TYPE,
                                             ErrorCode.INTERNAL]
    assert replies[0] == ErrorReply(ErrorCode.MALFORMED, "tag frame must be 2 bytes")
    assert replies[2] == ErrorReply(ErrorCode.UNKNOWN_TYPE, "unknown message type 4660", "", 0x1234)
    assert replies[3] == ErrorReply(ErrorCode.UNKNOWN_TYPE, "fuzz does not accept AbortRequest",
                                    ref_tag=m.AbortRequest.TAG)
    assert replies[4] == ErrorReply(ErrorCode.INTERNAL, "Boom: bad r9", ref_tag=m.DispatchQuery.TAG,
                                    query_id=77)
    assert replies[5] == m.InstanceTable(424242, ())  # still serving after the handler raised
    assert len(replies) == 6
    assert [type(c[1]) for c in calls] == [m.DispatchQuery, m.LoadReport, m.ListInstances]
    assert all(c[0] == b"peer" for c in calls)
    assert router.errors == 5


def test_router_identity_only_gets_malformed_and_empty_is_ignored():
    router, sock, _ = make_router()

    async def go():
        await router.handle_frames([])
        await router.handle_frames([b"lonely"])

    asyncio.run(go())
    assert sock.sent == [[b"lonely", *encode(ErrorReply(ErrorCode.MALFORMED,
                                                        "expected >= 2 frames, got 0"))]]


def _paths(wire, kind, path=()):
    """Where values of ``kind`` (str, bytes, list) sit in a wire array (not the array itself)."""
    for i, v in enumerate(wire):
        if isinstance(v, kind):
            yield (*path, i)
        if isinstance(v, list):
            yield from _paths(v, kind, (*path, i))


def _only(wire, kind, keep):
    """A copy of ``wire`` with every value of ``kind`` emptied but the one at ``keep``."""
    def walk(node, path):
        out = []
        for i, v in enumerate(node):
            here = (*path, i)
            if isinstance(v, list):
                v = walk(v, here)
            if isinstance(v, kind) and here != keep and keep[:len(here)] != here:
                v = kind()
            out.append(v)
        return out
    return walk(wire, ())


def _at(wire, path):
    for i in path:
        wire = wire[i]
    return wire


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda c: c.__name__)
def test_fast_path_at_every_cap_boundary(cls):
    """Each sample message, each string, bytes and list in it alone at full length (the others
    emptied), with its cap just below and at its length; and every depth cap: the fast path
    and the checks agree at the edge."""
    from test_codec import SAMPLES

    wire = msgpack.unpackb(msgpack.packb(SAMPLES[cls].to_wire(), use_bin_type=True))
    for kind, cap in ((str, "max_str"), (bytes, "max_bytes"), (list, "max_list")):
        for path in _paths(wire, kind):
            one = _only(wire, kind, path)
            n = len(_at(one, path))
            for limit in {max(0, n - 1), n}:
                same_outcome(cls, one, Limits(**{cap: limit}))
    for depth in range(10):
        same_outcome(cls, wire, Limits(max_depth=depth))


def _buildable(cls) -> bool:
    try:
        for_struct(cls)
        return True
    except (KeyError, ValueError, TypeError):
        return False


every_struct = st.sampled_from([c for c in _structs() if _buildable(c)]).flatmap(for_struct)


def _to_wire_plain(obj) -> list:
    """``to_wire`` through the per-field encoders (what the generated one inlines)."""
    return [getattr(obj, name) if (enc := _encoder(ann)) is None else enc(getattr(obj, name))
            for name, ann, _ in obj.spec()]


def _same_shape(a, b) -> bool:
    """Equal, with the same container types at every level (a list is not a tuple here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_shape(x, y) for x, y in zip(a, b))
    return a == b or a != a


@FUZZ
@given(every_struct)
def test_generated_to_wire_is_the_per_field_encoders(obj):
    fast, plain = obj.to_wire(), _to_wire_plain(obj)
    assert _same_shape(fast, plain)
    assert msgpack.packb(fast, use_bin_type=True) == msgpack.packb(plain, use_bin_type=True)
