"""Type and range checks shared by the frozen dataclasses of the protocol.

Every protocol dataclass calls :func:`check_types` from ``__post_init__`` so
that an instance which exists is a valid instance, whoever built it: the edge
from terminal JSON, or the decoder from a peer's msgpack.
"""

from __future__ import annotations

import dataclasses
import keyword
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from .errors import LocalProtocolError

#: Largest amount of money (minor units) or points we accept anywhere.
#: 10**11 cents is a billion in currency units: far above any real sale, far
#: below the 64-bit limits of SQLite and PostgreSQL.
MAX_AMOUNT = 10**11
MAX_POINTS = 10**9
#: C0 control characters and DEL: never in any text we store or sign.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


Checker = Callable[[object], bool]


#: Types checked by exact ``type(value) is T``; see :func:`_checker`.
_EXACT = (int, bool, str, bytes)


def exact_types(hint: Any) -> frozenset[type] | None:
    """The types a value of ``hint`` may have, when its exact type alone decides validity.

    ``str | None`` gives {str, NoneType}; anything with a tuple, a dataclass or
    an enum in it gives None (its contents or subclasses need the full checker).
    """
    if hint is type(None) or hint in _EXACT:
        return frozenset({hint})
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        parts = [exact_types(arg) for arg in typing.get_args(hint)]
        if any(part is None for part in parts):
            return None
        return frozenset().union(*typing.cast(list[frozenset[type]], parts))
    return None


def _checker(hint: Any) -> Checker:
    """A predicate for one annotation, built once per class and field.

    ``type(v) is int`` rather than isinstance: a bool must never pass as an
    amount, and exact types keep str and int subclasses out of the wire.
    Unions of such plain types and tuples of one plain type become a single
    set test, not a chain of closures per value.
    """
    origin = typing.get_origin(hint)
    exact = exact_types(hint)
    if exact is not None:
        if len(exact) == 1:
            (only,) = exact
            return lambda value: type(value) is only
        return lambda value: type(value) in exact
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        plain = frozenset().union(*(exact_types(arg) or () for arg in args))
        options = tuple(_checker(arg) for arg in args if exact_types(arg) is None)
        return lambda value: type(value) in plain or any(check(value) for check in options)
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            item_types = exact_types(args[0])
            if item_types is not None:
                return lambda value: type(value) is tuple and item_types.issuperset(map(type, value))
            item = _checker(args[0])
            return lambda value: type(value) is tuple and (not value or all(item(v) for v in value))
        items = tuple(_checker(arg) for arg in args)
        return lambda value: (
            type(value) is tuple and len(value) == len(items) and all(c(v) for c, v in zip(items, value, strict=True))
        )
    if isinstance(hint, type):
        return lambda value: isinstance(value, hint)
    raise TypeError(f"unsupported annotation {hint!r}")  # a bug in this package


def _sufficient_types(hint: Any) -> frozenset[type]:
    """Exact types that make a value of ``hint`` valid by themselves, plus tuple (see _fast_path)."""
    exact = exact_types(hint)
    if exact is not None:
        return exact
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return frozenset().union(*(_sufficient_types(arg) for arg in typing.get_args(hint)))
    if typing.get_origin(hint) is tuple:
        return frozenset({tuple})
    if isinstance(hint, type):  # a dataclass or an enum: its exact class passes isinstance
        return frozenset({hint})
    raise TypeError(f"unsupported annotation {hint!r}")  # a bug in this package


def _has_tuple(hint: Any) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_has_tuple(arg) for arg in typing.get_args(hint))
    return typing.get_origin(hint) is tuple


def _each_field(cls: type, hints: dict[str, Any]) -> Callable[[object], None]:
    """The definition of check_types: each field's checker in order, naming the first that fails."""
    checkers = tuple((name, _checker(hints[name])) for name in field_names(cls))

    def check_each(obj: object) -> None:
        for name, check in checkers:
            value = getattr(obj, name)
            if not check(value):
                raise LocalProtocolError(
                    f"{name} has the wrong type ({type(value).__name__})",
                    code="invalid_type",
                    field=name,
                )

    return check_each


def _fast_path(cls: type, hints: dict[str, Any]) -> Checker:
    """A predicate that is true only for objects check_each accepts, and for nearly all of them.

    It is generated source, one expression per class in the style of
    dataclasses' own ``__init__``, because it runs for every value the cloud
    decodes and builds: ``type(o.op_id) is t0 and type(o.code) in t2 ...``
    costs a third of a loop of closures over the fields. Each field's exact
    type must be one that passes its checker by itself (the exact class of
    an enum or dataclass passes isinstance); a tuple's items are then checked
    in full. A subclass or a wrong type makes it false, and check_each decides.
    """
    namespace: dict[str, Any] = {"type": type}
    terms = []
    for index, name in enumerate(field_names(cls)):
        if not name.isidentifier() or keyword.iskeyword(name):
            return lambda obj: False
        allowed = _sufficient_types(hints[name])
        if len(allowed) == 1:
            (namespace[f"t{index}"],) = allowed
            term = f"type(o.{name}) is t{index}"
        else:
            namespace[f"t{index}"] = allowed
            term = f"type(o.{name}) in t{index}"
        if _has_tuple(hints[name]):
            namespace[f"c{index}"] = _checker(hints[name])
            term = f"({term} and c{index}(o.{name}))"
        terms.append(term)
    predicate: Checker = eval("lambda o: " + (" and ".join(terms) or "True"), namespace)
    return predicate


def _compile(cls: type) -> tuple[Checker, Callable[[object], None]]:
    hints = typing.get_type_hints(cls)
    return _fast_path(cls, hints), _each_field(cls, hints)


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_FIELD_SETS: dict[type, frozenset[str]] = {}
_TYPE_CHECKS: dict[type, tuple[Checker, Callable[[object], None]]] = {}


def field_names(cls: type) -> tuple[str, ...]:
    """The dataclass's field names in order (cached: it sits on every decode)."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def field_set(cls: type) -> frozenset[str]:
    """The dataclass's field names as a set, for comparing with a map's keys."""
    names = _FIELD_SETS.get(cls)
    if names is None:
        names = _FIELD_SETS[cls] = frozenset(field_names(cls))
    return names


def check_types(obj: object) -> None:
    """Raise LocalProtocolError naming the first field whose type is wrong."""
    checks = _TYPE_CHECKS.get(type(obj))
    if checks is None:
        checks = _TYPE_CHECKS[type(obj)] = _compile(type(obj))
    fast, each = checks
    if not fast(obj):
        each(obj)


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
    # For ASCII text isprintable() is false exactly for C0 and DEL, at a fraction of a regex search;
    # anything else (other text, and a value of the wrong type, which must fail as it always did) is searched.
    if not (type(value) is str and value.isascii() and value.isprintable()) and _CONTROL.search(value):
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
    names = field_names(cls)
    # A decoded map is a plain dict, and nearly always has exactly the right keys.
    if type(obj) is dict and obj.keys() == field_set(cls):
        return {name: obj[name] for name in names}
    if not isinstance(obj, Mapping):
        raise LocalProtocolError(f"{what} must be a map", code="bad_shape", field=what)
    expected = field_set(cls)
    keys = set(obj)
    if keys != expected:
        extra, missing = sorted(map(str, keys - expected)), sorted(expected - keys)
        raise LocalProtocolError(
            f"{what} fields differ: unexpected {extra}, missing {missing}",
            code="bad_shape",
            field=(extra or missing)[0],
        )
    return {name: obj[name] for name in names}
