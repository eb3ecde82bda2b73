"""Type and range checks shared by the frozen dataclasses of the protocol.

Every protocol dataclass calls :func:`check_types` from ``__post_init__`` so
that an instance which exists is a valid instance, whoever built it: the edge
from terminal JSON, or the decoder from a peer's msgpack.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any

from .errors import LocalProtocolError

#: Largest amount of money (minor units) or points we accept anywhere.
#: 10**11 cents is a billion in currency units: far above any real sale, far
#: below the 64-bit limits of SQLite and PostgreSQL.
MAX_AMOUNT = 10**11
MAX_POINTS = 10**9
#: C0 control characters and DEL: never in any text we store or sign.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


Checker = typing.Callable[[object], bool]


def _checker(hint: Any) -> Checker:
    """A predicate for one annotation, built once per class and field.

    ``type(v) is int`` rather than isinstance: a bool must never pass as an
    amount, and exact types keep str and int subclasses out of the wire.
    """
    origin = typing.get_origin(hint)
    if hint is type(None):
        return lambda value: value is None
    if origin in (typing.Union, types.UnionType):
        options = tuple(_checker(arg) for arg in typing.get_args(hint))
        return lambda value: any(check(value) for check in options)
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            item = _checker(args[0])
            return lambda value: type(value) is tuple and all(item(v) for v in value)
        items = tuple(_checker(arg) for arg in args)
        return lambda value: (
            type(value) is tuple and len(value) == len(items) and all(c(v) for c, v in zip(items, value, strict=True))
        )
    if hint in (int, bool, str, bytes):
        return lambda value: type(value) is hint
    if isinstance(hint, type):
        return lambda value: isinstance(value, hint)
    raise TypeError(f"unsupported annotation {hint!r}")  # a bug in this package


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_CHECKERS: dict[type, tuple[tuple[str, Checker], ...]] = {}


def field_names(cls: type) -> tuple[str, ...]:
    """The dataclass's field names in order (cached: it sits on every decode)."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _checkers(cls: type) -> tuple[tuple[str, Checker], ...]:
    checkers = _CHECKERS.get(cls)
    if checkers is None:
        hints = typing.get_type_hints(cls)
        checkers = _CHECKERS[cls] = tuple((name, _checker(hints[name])) for name in field_names(cls))
    return checkers


def check_types(obj: object) -> None:
    """Raise LocalProtocolError naming the first field whose type is wrong."""
    for name, check in _checkers(type(obj)):
        value = getattr(obj, name)
        if not check(value):
            raise LocalProtocolError(
                f"{name} has the wrong type ({type(value).__name__})",
                code="invalid_type",
                field=name,
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
    if _CONTROL.search(value):
        raise LocalProtocolError(
            f"{name} contains control characters", code="invalid_text", field=name
        )


_PLAIN = frozenset({int, str, bytes, bool, type(None)})


def to_wire(obj: Any) -> Any:
    """Dataclasses to maps and tuples to lists, recursively, in field order."""
    if type(obj) in _PLAIN:
        return obj
    if isinstance(obj, (tuple, list)):
        return [to_wire(item) for item in obj]
    to_wire_method = getattr(obj, "to_wire", None)
    if to_wire_method is not None:
        return to_wire_method()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {name: to_wire(getattr(obj, name)) for name in field_names(type(obj))}
    return obj


def fields_of(cls: type, obj: object, what: str) -> dict[str, Any]:
    """The map's values by field name, or LocalProtocolError if keys differ."""
    from collections.abc import Mapping

    if not isinstance(obj, Mapping):
        raise LocalProtocolError(f"{what} must be a map", code="bad_shape", field=what)
    names = set(field_names(cls))
    keys = set(obj)
    if keys != names:
        extra, missing = sorted(map(str, keys - names)), sorted(names - keys)
        raise LocalProtocolError(
            f"{what} fields differ: unexpected {extra}, missing {missing}",
            code="bad_shape",
            field=(extra or missing)[0],
        )
    return {name: obj[name] for name in names}
