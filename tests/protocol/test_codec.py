"""Codec and schema: every message round-trips; the wire form; what a decoder rejects and why."""

from __future__ import annotations

import enum
import struct
import typing

import msgpack
import pytest
import zmq

from llumnix_zmq.protocol import messages as m
from llumnix_zmq.protocol.codec import DEFAULT_MAX_FRAME, DecodeError, decode, encode
from llumnix_zmq.protocol.messages import ALL_MESSAGES, BY_TAG, ErrorCode
from llumnix_zmq.protocol.schema import Limits, SchemaError, Struct

SAMPLING = m.SamplingParams(max_tokens=77, temperature=0.7, top_p=0.9, seed=42,
                            stop_token_ids=(2, 257), ignore_eos=True)
LOAD = m.InstanceLoad(
    num_blocks_total=1000, num_blocks_used=250, num_running=3, num_waiting=2,
    max_batch_size=64, block_size=32,
    requests=(m.RequestLoad("r1", 10, m.Priority.HIGH, 150, True, True),
              m.RequestLoad("r2", 4, m.Priority.NORMAL, 0, False, False)),
    draining=True, num_migrating_out=1, num_migrating_in=2,
)
STATE = m.RequestState("r1", "tcp://10.0.0.1:7000", (256, 72, 105), (33, 34), SAMPLING,
                       m.Priority.HIGH, 4, b"\x00rng\xff", 1234.5, b"\x81\xa1k\x01")

# One representative instance per message type, every field set away from its default.
SAMPLES: dict[type, m.Message] = {
    m.ErrorReply: m.ErrorReply(ErrorCode.NO_SPACE, "no blocks", "req-1", 20, 99),
    m.RegisterWorker: m.RegisterWorker(m.PROTOCOL_VERSION, "w1", "tcp://127.0.0.1:6001", "sim",
                                       "llama", 16, 4096, 8192, 128, 4321),
    m.RegisterAck: m.RegisterAck(m.PROTOCOL_VERSION, "w1", 0.25, "epoch-7"),
    m.LoadReport: m.LoadReport("w1", 17, LOAD),
    m.Deregister: m.Deregister("w1", "shutdown"),
    m.DispatchQuery: m.DispatchQuery(5, "req-1", 300, m.Priority.HIGH, ("w2", "w3"), 41),
    m.DispatchReply: m.DispatchReply(5, "req-1", "w1", "tcp://127.0.0.1:6001", "freest", 42),
    m.ListInstances: m.ListInstances(8),
    m.InstanceTable: m.InstanceTable(
        8, (m.InstanceInfo("w1", "tcp://a:1", m.InstanceState.DRAINING, LOAD, 0.5, "llama", 4096),
            m.InstanceInfo("w2", "tcp://b:2", m.InstanceState.ACTIVE, m.InstanceLoad(1, 0, 0, 0))),
        "epoch-7", "llumnix"),
    m.GenerateRequest: m.GenerateRequest("req-1", "tcp://fe:1", (256, 1, 2), SAMPLING,
                                         m.Priority.HIGH, (9, 8), 17.25),
    m.AbortRequest: m.AbortRequest("req-1", "client gone"),
    m.TokenBatch: m.TokenBatch("w1", 3, (
        m.TokenDelta("req-1", 4, (10, 11), m.FinishReason.NONE, 3),
        m.TokenDelta("req-2", 0, (), m.FinishReason.ERROR, 5, "boom", int(ErrorCode.INTERNAL)))),
    m.MigrateCommand: m.MigrateCommand(12, "w1", "w2", "tcp://b:2", 3, ("r1", "r2"), "operator",
                                         7),
    m.MigrateCommandReply: m.MigrateCommandReply(12, True, ("r1",), "ok"),
    m.ScaleOrder: m.ScaleOrder("w1", True, True),
    m.FrontendGone: m.FrontendGone("tcp://fe:1"),
    m.RequestMoved: m.RequestMoved("cmpl-7", "worker-3", 42),
    m.MigPreAlloc: m.MigPreAlloc(3, "r1", "w1", 2, 8, 4, 130),
    m.MigAck: m.MigAck(3, "r1", 2, (40, 41, 42, 43)),
    m.MigAbort: m.MigAbort(3, "r1", ErrorCode.NO_SPACE, "full"),
    m.MigCommit: m.MigCommit(3, "r1", "w1", STATE),
    m.MigCommitted: m.MigCommitted(3, "r1", "w2"),
}


def tag_frame(tag: int) -> bytes:
    return struct.pack(">H", tag)


def frames_of(cls, fields) -> list:
    return [tag_frame(cls.TAG), msgpack.packb(fields, use_bin_type=True)]


def decode_error(frames, **kw) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode(frames, **kw)
    return info.value


# --------------------------------------------------------------------------- round trips


def test_samples_cover_every_message_and_tags_are_unique():
    assert set(SAMPLES) == set(ALL_MESSAGES)
    assert len({c.TAG for c in ALL_MESSAGES}) == len(ALL_MESSAGES) == 22
    assert BY_TAG == {c.TAG: c for c in ALL_MESSAGES}
    assert 0 not in BY_TAG  # Message.TAG is reserved


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda c: c.__name__)
def test_every_message_round_trips(cls):
    msg = SAMPLES[cls]
    raw = [b"block-0", b"\x00" * 33]
    frames = encode(msg, raw)
    out, out_raw = decode(frames)
    assert out == msg
    assert type(out) is cls
    assert out_raw == raw
    assert out_raw[0] is raw[0]  # raw frames pass through untouched
    # every field is a default-overriding value, so a positional slip would show up
    defaults = cls.__dataclass_fields__
    for name, _, required in cls.spec():
        if not required:
            assert getattr(msg, name) != defaults[name].default, name


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda c: c.__name__)
def test_wire_form_is_tag_then_msgpack_array(cls):
    msg = SAMPLES[cls]
    frames = encode(msg)
    assert len(frames) == 2
    assert frames[0] == struct.pack(">H", cls.TAG)
    body = msgpack.unpackb(frames[1], raw=False)
    assert isinstance(body, list)
    assert len(body) == len(cls.spec())
    assert frames[1] == msgpack.packb(msg.to_wire(), use_bin_type=True)  # tuples pack as arrays


def test_exact_bytes_of_small_messages():
    assert encode(m.ListInstances(7)) == [b"\x00\x08", b"\x91\x07"]
    assert encode(m.Deregister("w", "")) == [b"\x00\x05", b"\x92\xa1w\xa0"]
    # enums travel as ints, tuples as arrays, bytes as bin
    assert msgpack.unpackb(encode(m.MigAbort(1, "r", ErrorCode.STALE))[1]) == [1, "r", 9, ""]
    assert encode(SAMPLES[m.MigCommit])[1].count(b"\xc4\x05\x00rng\xff") == 1


def test_raw_frames_of_other_buffer_types_pass_through():
    mv = memoryview(b"kv-bytes")
    ba = bytearray(b"more")
    frames = encode(m.MigAck(1, "r", 0), [mv, ba])
    assert frames[2] is mv and frames[3] is ba
    msg, raw = decode(frames)
    assert msg == m.MigAck(1, "r", 0)
    assert raw[0] is mv and raw[1] is ba


def test_decode_accepts_zmq_frames_memoryview_and_bytearray():
    tag, body = encode(SAMPLES[m.DispatchQuery])
    for wrap in (zmq.Frame, memoryview, bytearray):
        msg, raw = decode([wrap(tag), wrap(body)])
        assert msg == SAMPLES[m.DispatchQuery]
        assert raw == []


def test_decoded_containers_are_tuples_and_enums_are_enums():
    msg, _ = decode(encode(SAMPLES[m.InstanceTable]))
    assert type(msg.instances) is tuple
    assert type(msg.instances[0].load.requests) is tuple
    assert msg.instances[0].state is m.InstanceState.DRAINING
    assert msg.instances[0].load.requests[0].priority is m.Priority.HIGH


def test_int_is_accepted_for_float_and_becomes_float():
    msg, _ = decode(frames_of(m.RegisterAck, [1, "w1", 2, "e"]))
    assert msg == m.RegisterAck(1, "w1", 2.0, "e")
    assert type(msg.report_period_s) is float


def test_optional_field_accepts_none_and_value():
    for seed in (None, 0, -5):
        sp = m.SamplingParams(seed=seed)
        out, _ = decode(encode(m.GenerateRequest("r", "f", (), sp)))
        assert out.sampling.seed == seed


# --------------------------------------------------------------------------- compatibility


def test_longer_array_from_newer_peer_drops_extras():
    msg, _ = decode(frames_of(m.ListInstances, [7, "new field", [1, 2], {"x": 1}]))
    assert msg == m.ListInstances(7)
    nested = SAMPLES[m.LoadReport].to_wire()
    nested[2].append("future")  # extra field inside a nested struct too
    msg, _ = decode(frames_of(m.LoadReport, nested + [3.5]))
    assert msg == SAMPLES[m.LoadReport]


def test_shorter_array_with_only_required_fields_takes_defaults():
    msg, _ = decode(frames_of(m.DispatchQuery, [5, "r", 10]))
    assert msg == m.DispatchQuery(5, "r", 10, m.Priority.NORMAL, ())


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda c: c.__name__)
def test_array_shorter_than_required_fields_is_malformed(cls):
    required = sum(1 for _, _, req in cls.spec() if req)
    fields = SAMPLES[cls].to_wire()[: required - 1]
    exc = decode_error(frames_of(cls, fields))
    assert exc.code is ErrorCode.MALFORMED
    assert exc.message == f"{cls.__name__}: {required - 1} fields, needs {required}"
    assert exc.tag == cls.TAG


def test_short_nested_struct_is_malformed_with_path():
    wire = SAMPLES[m.LoadReport].to_wire()
    wire[2] = wire[2][:3]
    exc = decode_error(frames_of(m.LoadReport, wire))
    assert exc.code is ErrorCode.MALFORMED
    assert exc.message == "LoadReport.load: InstanceLoad: 3 fields, needs 4"


# --------------------------------------------------------------------------- framing errors


def test_unknown_tag():
    for tag in (0, 19, 25, 0xFFFF):
        exc = decode_error([tag_frame(tag), b"\x90"])
        assert exc.code is ErrorCode.UNKNOWN_TYPE
        assert exc.message == f"unknown message type {tag}"
        assert exc.tag == tag


@pytest.mark.parametrize("frames", [[], [b"\x00\x08"], [b"\x91\x07"]])
def test_fewer_than_two_frames(frames):
    exc = decode_error(frames)
    assert exc.code is ErrorCode.MALFORMED
    assert exc.message == f"expected >= 2 frames, got {len(frames)}"


@pytest.mark.parametrize("tag", [b"", b"\x08", b"\x00\x00\x08", b"\x00\x08\x00\x00"])
def test_bad_tag_length(tag):
    exc = decode_error([tag, b"\x91\x07"])
    assert exc.code is ErrorCode.MALFORMED
    assert exc.message == "tag frame must be 2 bytes"


def test_body_over_max_frame_is_too_large():
    tag, body = encode(m.Deregister("w1", "x" * 100))
    assert decode([tag, body], max_frame=len(body))[0] == m.Deregister("w1", "x" * 100)
    exc = decode_error([tag, body], max_frame=len(body) - 1)
    assert exc.code is ErrorCode.TOO_LARGE
    assert exc.message == f"{len(body)} bytes exceed {len(body) - 1}"
    assert exc.tag == m.Deregister.TAG
    assert DEFAULT_MAX_FRAME == 16 << 20


def test_default_max_frame_rejects_a_17_mib_body():
    exc = decode_error([tag_frame(m.Deregister.TAG), b"\x00" * ((16 << 20) + 1)])
    assert exc.code is ErrorCode.TOO_LARGE


# --------------------------------------------------------------------------- wrong types


def _wrong_values(ann) -> list:
    """Values of the wrong type for ``ann`` (each must be rejected)."""
    origin = typing.get_origin(ann)
    if origin is typing.Union:
        (inner,) = [a for a in typing.get_args(ann) if a is not type(None)]
        return _wrong_values(inner)
    if origin is tuple:
        return [{"k": 1}, "abc", 5, [object_of_wrong_item(typing.get_args(ann)[0])]]
    if isinstance(ann, type) and issubclass(ann, Struct):
        return [5, "x", {"a": 1}, None]
    if isinstance(ann, type) and issubclass(ann, enum.IntEnum):
        return [999, -1, "1", 1.0, True, None]
    if ann is bool:
        return [1, 0, "true", None, 1.0]
    if ann is int:
        return ["1", True, 1.5, 1.0, None, [1], b"1"]
    if ann is float:
        return ["1.0", True, None, [1.0]]
    if ann is str:
        return [1, b"bytes", None, ["s"], True]
    if ann is bytes:
        return ["text", 1, None, [1]]
    raise AssertionError(f"no wrong values for {ann!r}")


def object_of_wrong_item(item_ann):
    return _wrong_values(item_ann)[0]


def _cases():
    for cls in ALL_MESSAGES:
        hints = typing.get_type_hints(cls)
        for i, (name, _, _) in enumerate(cls.spec()):
            for value in _wrong_values(hints[name]):
                yield pytest.param(cls, i, name, value, id=f"{cls.__name__}.{name}={value!r}")


@pytest.mark.parametrize("cls,index,name,value", list(_cases()))
def test_wrong_type_in_each_position_is_malformed_naming_the_field(cls, index, name, value):
    wire = SAMPLES[cls].to_wire()
    wire[index] = value
    exc = decode_error(frames_of(cls, wire))
    assert exc.code is ErrorCode.MALFORMED
    assert exc.message.startswith(f"{cls.__name__}.{name}: ")
    assert exc.tag == cls.TAG


@pytest.mark.parametrize(
    "cls,fields,message",
    [
        (m.ListInstances, ["7"], "ListInstances.query_id: expected int, got str"),
        (m.ListInstances, [True], "ListInstances.query_id: expected int, got bool"),
        (m.ListInstances, [7.0], "ListInstances.query_id: expected int, got float"),
        (m.Deregister, [5], "Deregister.instance_id: expected str, got int"),
        (m.ScaleOrder, ["w", 1], "ScaleOrder.draining: expected bool, got int"),
        (m.RegisterAck, [1, "w", False], "RegisterAck.report_period_s: expected float, got bool"),
        (m.MigAck, [1, "r", 0, {"a": 1}], "MigAck.block_ids: expected list, got dict"),
        (m.MigAck, [1, "r", 0, [1, "2"]], "MigAck.block_ids: expected int, got str"),
        (m.ErrorReply, [999, "x"], "ErrorReply.code: 999 is not a ErrorCode"),
        (m.ErrorReply, [0, "x"], "ErrorReply.code: 0 is not a ErrorCode"),
        (m.ErrorReply, [True, "x"], "ErrorReply.code: expected enum int, got bool"),
        (m.LoadReport, ["w", 1, 5], "LoadReport.load: InstanceLoad: expected array, got int"),
        (m.LoadReport, ["w", 1, [1, 2, 3, "4"]],
         "LoadReport.load: InstanceLoad.num_waiting: expected int, got str"),
        (m.GenerateRequest, ["r", "f", [], [16, 0.0, 1.0, "seed"]],
         "GenerateRequest.sampling: SamplingParams.seed: expected int, got str"),
        (m.MigCommit, [1, "r", "w", ["r", "f", [], [], [1, "t"]]],
         "MigCommit.state: RequestState.sampling: SamplingParams.temperature: "
         "expected float, got str"),
    ],
)
def test_wrong_type_exact_messages(cls, fields, message):
    exc = decode_error(frames_of(cls, fields))
    assert exc.code is ErrorCode.MALFORMED
    assert exc.message == message


@pytest.mark.parametrize("body", [7, "str", {"query_id": 7}, None, b"\x07", 1.5])
def test_body_that_is_not_an_array(body):
    exc = decode_error(frames_of(m.ListInstances, body))
    assert exc.code is ErrorCode.MALFORMED
    assert exc.message == f"ListInstances: expected array, got {type(body).__name__}"


def test_msgpack_ext_value_is_not_taken_for_an_array():
    # an ExtType is a namedtuple in Python; it must not pass as a struct or a list
    exc = decode_error(frames_of(m.ListInstances, msgpack.ExtType(5, b"")))
    assert exc.code is ErrorCode.MALFORMED
    assert exc.message == "bad msgpack: ext type 5 is not part of the protocol"
    exc = decode_error(frames_of(m.MigAck, [1, "r", 0, msgpack.ExtType(3, b"")]))
    assert exc.code is ErrorCode.MALFORMED


def test_non_string_map_keys_are_malformed():
    body = msgpack.packb([1, {1: 2}])
    exc = decode_error([tag_frame(m.ListInstances.TAG), body])
    assert exc.code is ErrorCode.MALFORMED
    assert exc.message.startswith("bad msgpack: ")


# --------------------------------------------------------------------------- limits


def test_string_over_limit():
    frames = encode(m.Deregister("abcde", ""))
    assert decode(frames, limits=Limits(max_str=5))[0] == m.Deregister("abcde", "")
    exc = decode_error(frames, limits=Limits(max_str=4))
    assert exc.code is ErrorCode.MALFORMED
    assert exc.message.startswith("bad msgpack: ")
    # the schema's own character cap (for values that did not come through msgpack)
    with pytest.raises(SchemaError) as info:
        m.Deregister.from_wire(["abcde", ""], Limits(max_str=4))
    assert str(info.value) == "Deregister.instance_id: string of 5 exceeds 4"


def test_list_over_limit():
    # max_list caps every msgpack array, struct arrays included (a TokenDelta is 7 long)
    frames = encode(m.TokenBatch("w", 1, tuple(m.TokenDelta("r", i) for i in range(8))))
    assert decode(frames, limits=Limits(max_list=8))[0].items[7] == m.TokenDelta("r", 7)
    exc = decode_error(frames, limits=Limits(max_list=7))
    assert exc.code is ErrorCode.MALFORMED
    assert exc.message == "bad msgpack: 8 exceeds max_array_len(7)"
    with pytest.raises(SchemaError) as info:
        m.MigAck.from_wire([1, "r", 0, [1, 2, 3, 4]], Limits(max_list=3))
    assert str(info.value) == "MigAck.block_ids: list of 4 exceeds 3"


def test_bytes_over_limit():
    frames = encode(SAMPLES[m.MigCommit])  # rng_state is 5 bytes, engine_extra 4
    assert decode(frames, limits=Limits(max_bytes=5))[0] == SAMPLES[m.MigCommit]
    exc = decode_error(frames, limits=Limits(max_bytes=4))
    assert exc.code is ErrorCode.MALFORMED
    with pytest.raises(SchemaError) as info:
        m.MigCommit.from_wire(SAMPLES[m.MigCommit].to_wire(), Limits(max_bytes=4))
    assert str(info.value) == "MigCommit.state: RequestState.rng_state: bytes of 5 exceed 4"


def test_nesting_over_max_depth():
    frames = encode(SAMPLES[m.InstanceTable])  # requests reach depth 6
    assert decode(frames, limits=Limits(max_depth=6))[0] == SAMPLES[m.InstanceTable]
    exc = decode_error(frames, limits=Limits(max_depth=5))
    assert exc.code is ErrorCode.MALFORMED
    assert "nested too deep" in exc.message
    assert exc.message.startswith("InstanceTable.instances: ")


# --------------------------------------------------------------------------- garbage


@pytest.mark.parametrize(
    "body",
    [b"", b"\xc1", b"\x92\x01", b"\x91\x01\x02", b"\xdd\xff\xff\xff\xff", b"\xa5abc",
     b"\x91\xa2\xff\xfe", b"\xd9", b"\x91\xc7\x01"],
    ids=["empty", "never-used", "truncated-array", "extra-data", "huge-array-header",
         "truncated-str", "bad-utf8", "truncated-str8", "truncated-ext"],
)
def test_msgpack_garbage_is_malformed(body):
    exc = decode_error([tag_frame(m.ListInstances.TAG), body])
    assert exc.code is ErrorCode.MALFORMED
    assert exc.message.startswith("bad msgpack")
    assert exc.tag == m.ListInstances.TAG


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda c: c.__name__)
def test_every_truncation_of_a_valid_body_is_malformed(cls):
    tag, body = encode(SAMPLES[cls])
    for n in range(len(body)):
        exc = decode_error([tag, body[:n]])
        assert exc.code is ErrorCode.MALFORMED, n


# --------------------------------------------------------------------------- DecodeError


def test_decode_error_reply():
    exc = decode_error([tag_frame(m.ListInstances.TAG), b"\x91\xa1x"])
    reply = exc.reply()
    assert reply == m.ErrorReply(ErrorCode.MALFORMED, "ListInstances.query_id: expected int, "
                                 "got str", "", m.ListInstances.TAG, 0)
    assert exc.reply("req-9", 4) == m.ErrorReply(ErrorCode.MALFORMED, exc.message, "req-9",
                                                 m.ListInstances.TAG, 4)
    unknown = decode_error([tag_frame(300), b"\x90"])
    assert unknown.reply() == m.ErrorReply(ErrorCode.UNKNOWN_TYPE, "unknown message type 300",
                                           "", 300, 0)
    # and the reply itself travels
    assert decode(encode(reply))[0] == reply
