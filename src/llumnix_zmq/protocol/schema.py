"""The base every wire message and nested struct derives from, and its validation rules.

Rules, carried once here (SGLang's BaseReq idea):
- a struct is a frozen dataclass; it travels as a msgpack *array* of its field values in
  declaration order, so fields are append-only: a new field goes last and has a default;
- a decoder accepts an array longer than it knows (a newer peer) and drops the extras, and an
  array shorter than its required fields is malformed;
- every decoded value is checked against the field's annotation: int, float, str, bytes, bool,
  IntEnum (sent as int), Optional[X], list[X], dict[str, X] and nested Structs; str/bytes/list
  lengths are capped by ``Limits``.
Nothing here imports anything heavier than the standard library.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class Limits:
    """Caps applied while decoding (one message, one field)."""

    max_str: int = 1 << 20
    max_bytes: int = 1 << 24
    max_list: int = 1 << 20
    max_depth: int = 8


DEFAULT_LIMITS = Limits()


class SchemaError(ValueError):
    """A decoded value does not fit the declared schema."""


class Struct:
    """Base of every wire struct: subclasses are ``@dataclass(frozen=True)`` with typed fields."""

    _spec: ClassVar[tuple[tuple[str, Any, bool], ...]]  # (name, annotation, required)

    def to_wire(self) -> list[Any]:
        return [_to_wire(getattr(self, name)) for name, _, _ in self.spec()]

    @classmethod
    def spec(cls) -> tuple[tuple[str, Any, bool], ...]:
        cached = cls.__dict__.get("_spec_cache")
        if cached is None:
            hints = typing.get_type_hints(cls)
            cached = tuple(
                (
                    f.name,
                    hints[f.name],
                    f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
                )
                for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            )
            cls._spec_cache = cached  # type: ignore[attr-defined]
        return cached

    @classmethod
    def from_wire(cls, raw: Any, limits: Limits = DEFAULT_LIMITS, depth: int = 0):
        if not isinstance(raw, (list, tuple)):
            raise SchemaError(f"{cls.__name__}: expected array, got {type(raw).__name__}")
        spec = cls.spec()
        required = sum(1 for _, _, req in spec if req)
        if len(raw) < required:
            raise SchemaError(f"{cls.__name__}: {len(raw)} fields, needs {required}")
        kwargs = {}
        for (name, ann, _), value in zip(spec, raw):
            try:
                kwargs[name] = _check(ann, value, limits, depth + 1)
            except SchemaError as exc:
                raise SchemaError(f"{cls.__name__}.{name}: {exc}") from None
        return cls(**kwargs)


def _to_wire(value: Any) -> Any:
    if isinstance(value, Struct):
        return value.to_wire()
    if isinstance(value, enum.IntEnum):
        return int(value)
    if isinstance(value, (list, tuple)):
        return [_to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    return value


def _check(ann: Any, value: Any, limits: Limits, depth: int) -> Any:
    if depth > limits.max_depth:
        raise SchemaError("nested too deep")
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(ann)
        if value is None and type(None) in args:
            return None
        last: SchemaError | None = None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(arg, value, limits, depth)
            except SchemaError as exc:
                last = exc
        raise last or SchemaError("no union member matched")
    if origin in (list, tuple):
        (item,) = typing.get_args(ann)[:1]
        if not isinstance(value, (list, tuple)):
            raise SchemaError(f"expected list, got {type(value).__name__}")
        if len(value) > limits.max_list:
            raise SchemaError(f"list of {len(value)} exceeds {limits.max_list}")
        return tuple(_check(item, v, limits, depth + 1) for v in value)
    if origin is dict:
        key_t, val_t = typing.get_args(ann)
        if not isinstance(value, dict):
            raise SchemaError(f"expected map, got {type(value).__name__}")
        if len(value) > limits.max_list:
            raise SchemaError("map too large")
        return {
            _check(key_t, k, limits, depth + 1): _check(val_t, v, limits, depth + 1)
            for k, v in value.items()
        }
    if ann is Any:
        return value
    if isinstance(ann, type) and issubclass(ann, Struct):
        return ann.from_wire(value, limits, depth)
    if isinstance(ann, type) and issubclass(ann, enum.IntEnum):
        if type(value) is not int:
            raise SchemaError(f"expected enum int, got {type(value).__name__}")
        try:
            return ann(value)
        except ValueError:
            raise SchemaError(f"{value} is not a {ann.__name__}") from None
    if ann is bool:
        if type(value) is not bool:
            raise SchemaError(f"expected bool, got {type(value).__name__}")
        return value
    if ann is int:
        if type(value) is not int:
            raise SchemaError(f"expected int, got {type(value).__name__}")
        return value
    if ann is float:
        if type(value) not in (float, int):
            raise SchemaError(f"expected float, got {type(value).__name__}")
        return float(value)
    if ann is str:
        if type(value) is not str:
            raise SchemaError(f"expected str, got {type(value).__name__}")
        if len(value) > limits.max_str:
            raise SchemaError(f"string of {len(value)} exceeds {limits.max_str}")
        return value
    if ann is bytes:
        if type(value) is not bytes:
            raise SchemaError(f"expected bytes, got {type(value).__name__}")
        if len(value) > limits.max_bytes:
            raise SchemaError(f"bytes of {len(value)} exceed {limits.max_bytes}")
        return value
    raise SchemaError(f"unsupported annotation {ann!r}")
