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
        cls = type(self)
        fast = cls.__dict__.get("_to_wire_cache")
        if fast is None:
            fast = cls._to_wire_cache = _generate_to_wire(cls)  # type: ignore[attr-defined]
        return fast(self)

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
        fast = cls.__dict__.get("_from_wire_cache")
        if fast is None:
            fast = cls._from_wire_cache = _generate_from_wire(cls)  # type: ignore[attr-defined]
        try:
            return fast(raw, limits, depth)
        except Exception:  # not the common case: the checks below decide, and name the fault
            pass
        return cls._from_wire_checked(raw, limits, depth)

    @classmethod
    def _from_wire_checked(cls, raw: Any, limits: Limits, depth: int):
        if not isinstance(raw, (list, tuple)):
            raise SchemaError(f"{cls.__name__}: expected array, got {type(raw).__name__}")
        plan = cls.__dict__.get("_plan_cache")
        if plan is None:
            spec = cls.spec()
            defaults = tuple(f.default for f in dataclasses.fields(cls))  # type: ignore[arg-type]
            plan = (sum(1 for _, _, req in spec if req),
                    tuple((name, _compile(ann)) for name, ann, _ in spec),
                    tuple(name for name, _, _ in spec), defaults)
            cls._plan_cache = plan  # type: ignore[attr-defined]
        required, fields, names, defaults = plan
        if len(raw) < required:
            raise SchemaError(f"{cls.__name__}: {len(raw)} fields, needs {required}")
        d = depth + 1
        try:
            if raw and d > limits.max_depth:
                raise SchemaError("nested too deep")
            values = [check(value, limits, d) for (_, check), value in zip(fields, raw)]
        except SchemaError as exc:
            first = exc
        else:
            # the frozen dataclass's __init__ sets fields one object.__setattr__ at a time; wire
            # structs have no __post_init__ and plain defaults, so fill the instance directly
            # (fields a newer peer appended are dropped; missing optional ones take defaults)
            if len(values) < len(names):
                values += defaults[len(values):]
            obj = object.__new__(cls)
            obj.__dict__.update(zip(names, values))
            return obj
        for (name, check), value in zip(fields, raw):  # again, to name the field at fault
            try:
                check(value, limits, d)
            except SchemaError as exc:
                raise SchemaError(f"{cls.__name__}.{name}: {exc}") from None
        raise SchemaError(f"{cls.__name__}: {first}")


class _Reject(Exception):
    """The generated fast path declines: the checked path decides (and names the fault)."""


def _generate_from_wire(cls) -> Any:
    """``cls.from_wire``'s common case as one generated function: the same checks as the
    compiled per-field checkers, inlined (no call per field or list item), for a message that
    is valid. Anything it does not accept, it declines (``_Reject`` or any exception) and the
    checked path decides, so both accept exactly the same input and build equal objects. It
    runs only where the whole struct is within ``limits.max_depth`` (``_static_depth``)."""
    spec = cls.spec()
    fields = dataclasses.fields(cls)
    env: dict[str, Any] = {"_Reject": _Reject, "_new": object.__new__, "_cls": cls,
                           "_tuple": tuple, "_list": list, "_int": int, "_str": str,
                           "_float": float, "_bytes": bytes, "_bool": bool}
    required = sum(1 for _, _, req in spec if req)
    lines = ["def fast(raw, limits, depth):",
             f"    if depth + {_static_depth(cls)} > limits.max_depth:",
             "        raise _Reject",
             "    t = type(raw)",
             "    if t is not _list and t is not _tuple:",
             "        raise _Reject",
             "    n = len(raw)",
             f"    if n < {required}:",
             "        raise _Reject",
             "    ms, mb, ml = limits.max_str, limits.max_bytes, limits.max_list"]
    for i, ((name, ann, req), f) in enumerate(zip(spec, fields)):
        v = f"v{i}"
        body = _inline(ann, v, env, f"k{i}", "    ")
        if req:
            lines.append(f"    {v} = raw[{i}]")
            lines += body
        else:
            env[f"d{i}"] = f.default
            lines.append(f"    if n > {i}:")
            lines.append(f"        {v} = raw[{i}]")
            lines += ["    " + line for line in body]
            lines.append("    else:")
            lines.append(f"        {v} = d{i}")
    items = ", ".join(f"{name!r}: v{i}" for i, (name, _, _) in enumerate(spec))
    lines += ["    obj = _new(_cls)", f"    obj.__dict__.update({{{items}}})", "    return obj"]
    exec("\n".join(lines), env)  # noqa: S102 - generated from the class's own annotations
    return env["fast"]


_SCALARS = {int: "_int", bool: "_bool", str: "_str", bytes: "_bytes"}


def _inline(ann: Any, v: str, env: dict, key: str, ind: str) -> list[str]:
    """Lines that check ``v`` against ``ann`` (and convert it as the checker would)."""
    origin = typing.get_origin(ann)
    if ann in (int, bool):
        return [f"{ind}if type({v}) is not {_SCALARS[ann]}:", f"{ind}    raise _Reject"]
    if ann is str:
        return [f"{ind}if type({v}) is not _str or len({v}) > ms:", f"{ind}    raise _Reject"]
    if ann is bytes:
        return [f"{ind}if type({v}) is not _bytes or len({v}) > mb:", f"{ind}    raise _Reject"]
    if ann is float:
        return [f"{ind}if type({v}) is not _float:", f"{ind}    if type({v}) is not _int:",
                f"{ind}        raise _Reject", f"{ind}    {v} = _float({v})"]
    if isinstance(ann, type) and issubclass(ann, enum.IntEnum):
        env[key] = {int(m): m for m in ann}
        return [f"{ind}if type({v}) is not _int:", f"{ind}    raise _Reject",
                f"{ind}{v} = {key}.get({v})", f"{ind}if {v} is None:", f"{ind}    raise _Reject"]
    if isinstance(ann, type) and issubclass(ann, Struct):
        env[key] = ann
        return [f"{ind}{v} = {key}.from_wire({v}, limits, depth + 1)"]
    if origin in (list, tuple):
        (item,) = typing.get_args(ann)[:1]
        head = [f"{ind}if type({v}) is not _list and type({v}) is not _tuple or len({v}) > ml:",
                f"{ind}    raise _Reject"]
        if item in (int, bool):
            return head + [f"{ind}for x in {v}:", f"{ind}    if type(x) is not {_SCALARS[item]}:",
                           f"{ind}        raise _Reject", f"{ind}{v} = _tuple({v})"]
        if item is str:
            return head + [f"{ind}for x in {v}:", f"{ind}    if type(x) is not _str or len(x) > ms:",
                           f"{ind}        raise _Reject", f"{ind}{v} = _tuple({v})"]
        if isinstance(item, type) and issubclass(item, Struct):
            env[key] = item
            return head + [f"{ind}{v} = _tuple([{key}.from_wire(x, limits, depth + 2) "
                           f"for x in {v}])"]
    env[key] = _compile(ann)  # anything else: the compiled checker, at its own depth
    return [f"{ind}{v} = {key}({v}, limits, depth + 1)"]


def _static_depth(cls, seen: tuple = ()) -> int:
    """The deepest ``depth`` the checked path compares with ``max_depth`` for ``cls``, less
    the depth it starts at (structs nest without cycles; a cycle counts as unbounded)."""
    if cls in seen:
        return 1 << 20
    deepest = 0
    for _, ann, _ in cls.spec():
        deepest = max(deepest, _ann_depth(ann, (*seen, cls)))
    return 1 + deepest


def _ann_depth(ann: Any, seen: tuple) -> int:
    origin = typing.get_origin(ann)
    if isinstance(ann, type) and issubclass(ann, Struct):
        return _static_depth(ann, seen)
    if origin in (list, tuple):
        return 1 + _ann_depth(typing.get_args(ann)[0], seen)
    if origin is dict:
        return 1 + max(_ann_depth(a, seen) for a in typing.get_args(ann))
    if origin in (typing.Union, types.UnionType):
        return max(_ann_depth(a, seen) for a in typing.get_args(ann) if a is not type(None))
    return 0


def _generate_to_wire(cls) -> Any:
    """``cls.to_wire`` as one generated function: each field's encoder inlined (a value that
    packs as it is, ``int()`` of an enum, a nested struct's or each item's ``to_wire``)."""
    env: dict[str, Any] = {"_to_wire": _to_wire, "_int": int}
    items = []
    for i, (name, ann, _) in enumerate(cls.spec()):
        items.append(_encode_expr(ann, f"d[{name!r}]", env, f"e{i}"))
    src = "def to_wire(self):\n    d = self.__dict__\n    return [" + ", ".join(items) + "]"
    exec(src, env)  # noqa: S102 - generated from the class's own annotations
    return env["to_wire"]


def _encode_expr(ann: Any, x: str, env: dict, key: str) -> str:
    if _encoder(ann) is None:
        return x
    origin = typing.get_origin(ann)
    if isinstance(ann, type) and issubclass(ann, Struct):
        return f"{x}.to_wire()"
    if isinstance(ann, type) and issubclass(ann, enum.IntEnum):
        return f"_int({x})"
    if origin in (list, tuple):
        item = typing.get_args(ann)[0]
        if isinstance(item, type) and issubclass(item, Struct):
            return f"[v.to_wire() for v in {x}]"
        env[key] = _encoder(item)
        return f"[{key}(v) for v in {x}]"
    return f"_to_wire({x})"


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


def _encoder(ann: Any):
    """How a field of type ``ann`` goes to msgpack: None when the value packs as it is (ints,
    strings, bytes, floats, tuples/lists/dicts of those), else a converter."""
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        members = [_encoder(a) for a in typing.get_args(ann) if a is not type(None)]
        return None if all(m is None for m in members) else _to_wire
    if origin in (list, tuple):
        item = _encoder(typing.get_args(ann)[0])
        if item is None:
            return None
        return lambda value: [item(v) for v in value]
    if origin is dict:
        return None if all(_encoder(a) is None for a in typing.get_args(ann)) else _to_wire
    if isinstance(ann, type) and issubclass(ann, Struct):
        return ann.to_wire
    if isinstance(ann, type) and issubclass(ann, enum.IntEnum):
        return int  # what the decoder expects (msgpack would pack the enum as an int anyway)
    if ann in (bool, int, float, str, bytes):
        return None
    return _to_wire


_COMPILED: dict[Any, Any] = {}


def _compile(ann: Any):
    """A checker ``f(value, limits, depth) -> value`` for an annotation, built once: decoding
    then costs no type-hint introspection per value (hot path: a TokenBatch per engine step)."""
    fn = _COMPILED.get(ann)
    if fn is None:
        fn = _COMPILED[ann] = _build(ann)
    return fn


def _depth_guard(inner):
    def check(value, limits, depth):
        if depth > limits.max_depth:
            raise SchemaError("nested too deep")
        return inner(value, limits, depth)

    return check


def _build(ann: Any):
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(ann)
        optional = type(None) in args
        members = [_compile(a) for a in args if a is not type(None)]

        def check_union(value, limits, depth):
            if value is None and optional:
                return None
            last: SchemaError | None = None
            for member in members:
                try:
                    return member(value, limits, depth)
                except SchemaError as exc:
                    last = exc
            raise last or SchemaError("no union member matched")

        return _depth_guard(check_union)
    if origin in (list, tuple):
        item = _compile(typing.get_args(ann)[0])

        def check_list(value, limits, depth):
            if not isinstance(value, (list, tuple)):
                raise SchemaError(f"expected list, got {type(value).__name__}")
            if len(value) > limits.max_list:
                raise SchemaError(f"list of {len(value)} exceeds {limits.max_list}")
            d = depth + 1
            if value and d > limits.max_depth:
                raise SchemaError("nested too deep")
            return tuple([item(v, limits, d) for v in value])

        return _depth_guard(check_list)
    if origin is dict:
        key_t, val_t = (_compile(a) for a in typing.get_args(ann))

        def check_map(value, limits, depth):
            if not isinstance(value, dict):
                raise SchemaError(f"expected map, got {type(value).__name__}")
            if len(value) > limits.max_list:
                raise SchemaError("map too large")
            d = depth + 1
            if value and d > limits.max_depth:
                raise SchemaError("nested too deep")
            return {key_t(k, limits, d): val_t(v, limits, d) for k, v in value.items()}

        return _depth_guard(check_map)
    if ann is Any:
        return _depth_guard(lambda value, limits, depth: value)
    if isinstance(ann, type) and issubclass(ann, Struct):
        return _depth_guard(lambda value, limits, depth: ann.from_wire(value, limits, depth))
    if isinstance(ann, type) and issubclass(ann, enum.IntEnum):
        members = {int(m): m for m in ann}

        def check_enum(value, limits, depth):
            if type(value) is not int:
                raise SchemaError(f"expected enum int, got {type(value).__name__}")
            member = members.get(value)
            if member is None:
                raise SchemaError(f"{value} is not a {ann.__name__}")
            return member

        return check_enum
    if ann in (bool, int):
        def check_exact(value, limits, depth):
            if type(value) is not ann:
                raise SchemaError(f"expected {ann.__name__}, got {type(value).__name__}")
            return value

        return check_exact
    if ann is float:
        def check_float(value, limits, depth):
            if type(value) not in (float, int):
                raise SchemaError(f"expected float, got {type(value).__name__}")
            return float(value)

        return check_float
    if ann is str:
        def check_str(value, limits, depth):
            if type(value) is not str:
                raise SchemaError(f"expected str, got {type(value).__name__}")
            if len(value) > limits.max_str:
                raise SchemaError(f"string of {len(value)} exceeds {limits.max_str}")
            return value

        return check_str
    if ann is bytes:
        def check_bytes(value, limits, depth):
            if type(value) is not bytes:
                raise SchemaError(f"expected bytes, got {type(value).__name__}")
            if len(value) > limits.max_bytes:
                raise SchemaError(f"bytes of {len(value)} exceed {limits.max_bytes}")
            return value

        return check_bytes
    raise SchemaError(f"unsupported annotation {ann!r}")
