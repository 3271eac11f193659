"""Encode and decode wire messages: ``[tag u16][msgpack array][raw frames…]``. No pickle.

``decode`` never raises anything but ``DecodeError``, which carries an ``ErrorCode`` so a
handler can answer with an ``ErrorReply`` and keep its loop alive.
"""

from __future__ import annotations

import struct
from typing import Sequence

import msgpack

from .messages import BY_TAG, ErrorCode, ErrorReply, Message
from .schema import DEFAULT_LIMITS, Limits, SchemaError

_TAG = struct.Struct(">H")
DEFAULT_MAX_FRAME = 16 << 20  # bytes of one msgpack header frame


class DecodeError(Exception):
    def __init__(self, code: ErrorCode, message: str, tag: int = 0):
        super().__init__(message)
        self.code = code
        self.message = message
        self.tag = tag

    def reply(self, request_id: str = "", query_id: int = 0) -> ErrorReply:
        return ErrorReply(self.code, self.message, request_id, self.tag, query_id)


def encode(msg: Message, raw: Sequence = ()) -> list:
    """Frames for ``msg``; ``raw`` buffers (bytes, memoryview, numpy arrays) follow as-is."""
    body = msgpack.packb(msg.to_wire(), use_bin_type=True)
    return [_TAG.pack(msg.TAG), body, *raw]


def decode(
    frames: Sequence, limits: Limits = DEFAULT_LIMITS, max_frame: int = DEFAULT_MAX_FRAME
) -> tuple[Message, list]:
    """Message and its trailing raw frames from ``frames`` (identity frames already removed)."""
    if len(frames) < 2:
        raise DecodeError(ErrorCode.MALFORMED, f"expected >= 2 frames, got {len(frames)}")
    tag_frame, body = _as_bytes(frames[0]), frames[1]
    if len(tag_frame) != 2:
        raise DecodeError(ErrorCode.MALFORMED, "tag frame must be 2 bytes")
    (tag,) = _TAG.unpack(tag_frame)
    cls = BY_TAG.get(tag)
    if cls is None:
        raise DecodeError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {tag}", tag)
    body = _as_bytes(body)
    if len(body) > max_frame:
        raise DecodeError(ErrorCode.TOO_LARGE, f"{len(body)} bytes exceed {max_frame}", tag)
    try:
        raw = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            max_str_len=limits.max_str,
            max_bin_len=limits.max_bytes,
            max_array_len=limits.max_list,
            max_map_len=limits.max_list,
            ext_hook=_reject_ext,
        )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise DecodeError(ErrorCode.MALFORMED, f"bad msgpack: {exc}", tag) from None
    except Exception as exc:  # msgpack raises a few oddities (e.g. TypeError on bad ext)
        raise DecodeError(ErrorCode.MALFORMED, f"bad msgpack: {type(exc).__name__}", tag) from None
    try:
        msg = cls.from_wire(raw, limits)
    except SchemaError as exc:
        raise DecodeError(ErrorCode.MALFORMED, str(exc), tag) from None
    except (TypeError, ValueError) as exc:
        raise DecodeError(ErrorCode.MALFORMED, f"{cls.__name__}: {exc}", tag) from None
    return msg, list(frames[2:])


def _reject_ext(code: int, data: bytes):
    # msgpack hands an ext value back as ExtType, a namedtuple that would pass for an array
    raise ValueError(f"ext type {code} is not part of the protocol")


def _as_bytes(frame) -> bytes:
    if isinstance(frame, bytes):
        return frame
    buf = getattr(frame, "buffer", None)  # zmq.Frame
    if buf is not None:
        return bytes(buf)
    return bytes(frame)
