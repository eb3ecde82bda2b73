"""Type and range checks shared by the frozen dataclasses of the protocol.

Every protocol dataclass calls :func:`check_types` from ``__post_init__`` so
that an instance which exists is a valid instance, whoever built it: the edge
from terminal JSON, or the decoder from a peer's msgpack.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any

from .errors import LocalProtocolError

#: Largest amount of money (minor units) or points we accept anywhere.
#: 10**11 cents is a billion in currency units: far above any real sale, far
#: below the 64-bit limits of SQLite and PostgreSQL.
MAX_AMOUNT = 10**11
MAX_POINTS = 10**9


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _matches(value: object, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(item, args[0]) for item in value)
        return len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args, strict=True))
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is bool:
        return isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is bytes:
        return isinstance(value, bytes)
    if isinstance(hint, type):
        return isinstance(value, hint)
    raise TypeError(f"unsupported annotation {hint!r}")  # a bug in this package


def check_types(obj: object) -> None:
    """Raise LocalProtocolError naming the first field whose type is wrong."""
    hints = _hints(typing.cast(type, type(obj)))
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if not _matches(value, hints[f.name]):
            raise LocalProtocolError(
                f"{f.name} has the wrong type ({type(value).__name__})",
                code="invalid_type",
                field=f.name,
            )


def check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise LocalProtocolError(
            f"{name} must be between {low} and {high}", code="out_of_range", field=name
        )


def check_text(name: str, value: str | None, max_len: int, *, required: bool = False) -> None:
    if value is None:
        if required:
            raise LocalProtocolError(f"{name} is required", code="missing", field=name)
        return
    if required and not value.strip():
        raise LocalProtocolError(f"{name} must not be empty", code="missing", field=name)
    if len(value) > max_len:
        raise LocalProtocolError(
            f"{name} is longer than {max_len} characters", code="too_long", field=name
        )
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise LocalProtocolError(
            f"{name} contains control characters", code="invalid_text", field=name
        )


def to_wire(obj: Any) -> Any:
    """Dataclasses to maps and tuples to lists, recursively, in field order."""
    to_wire_method = getattr(obj, "to_wire", None)
    if to_wire_method is not None:
        return to_wire_method()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_wire(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_wire(item) for item in obj]
    return obj


def fields_of(cls: type, obj: object, what: str) -> dict[str, Any]:
    """The map's values by field name, or LocalProtocolError if keys differ."""
    from collections.abc import Mapping

    if not isinstance(obj, Mapping):
        raise LocalProtocolError(f"{what} must be a map", code="bad_shape", field=what)
    names = {f.name for f in dataclasses.fields(cls)}
    keys = set(obj)
    if keys != names:
        extra, missing = sorted(map(str, keys - names)), sorted(names - keys)
        raise LocalProtocolError(
            f"{what} fields differ: unexpected {extra}, missing {missing}",
            code="bad_shape",
            field=(extra or missing)[0],
        )
    return {name: obj[name] for name in names}
