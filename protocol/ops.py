"""Operation types: every change a terminal makes at an edge is one of these.

Ops are frozen and validate when built. Money is integer minor units, points
are integers; there is no float anywhere. ``op_id`` is a UUIDv7 made by the
edge and stored before the terminal gets its answer, so the cloud can apply
each op exactly once however often a batch is resent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import keyword
import threading
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

import msgpack

from .errors import LocalProtocolError, RemoteProtocolError
from .ids import is_uuid, is_uuid7, match_uuid, match_uuid7
from .sale import MAX_LINES, MAX_QUANTITY, Sale, sale_from_wire
from .validate import (
    MAX_AMOUNT,
    MAX_POINTS,
    check_range,
    check_text,
    check_types,
    exact_types,
    field_names,
    field_set,
    fields_of,
)

#: Milliseconds since the epoch; anything outside 2020..2100 is a broken clock.
MIN_TIME_MS = 1_577_836_800_000
MAX_TIME_MS = 4_102_444_800_000

CONSENT_CHANNELS = frozenset({"phone", "email"})
CONSENT_SOURCES = frozenset({"pos", "kiosk", "portal", "qr", "import"})
PROFILE_FIELDS = ("name", "phone", "email", "card_code", "groups", "opted_out")
#: A customer's groups (staff, wholesale, ...): what zero-earning rules match on.
MAX_GROUPS = 20
#: Distinct rewards one redemption may name (the catalog holds at most 15).
MAX_REDEEM_REWARDS = 15


class OpKind(StrEnum):
    ENROLL = "enroll"
    UPDATE_PROFILE = "update_profile"
    EARN = "earn"
    REDEEM = "redeem"
    VOID = "void"
    ADJUST = "adjust"
    REFUND = "refund"
    #: A paid sale recorded with no profile, and its claim later (``protocol.claim_ops``).
    UNCLAIMED_SALE = "unclaimed_sale"
    CLAIM = "claim"


def _check_id(name: str, value: str, *, v7: bool = False) -> None:
    if not (is_uuid7(value) if v7 else is_uuid(value)):
        kind = "a UUIDv7" if v7 else "a UUID"
        raise LocalProtocolError(f"{name} must be {kind}", code="invalid_id", field=name)


def _check_time(name: str, value: int) -> None:
    check_range(name, value, MIN_TIME_MS, MAX_TIME_MS)


def check_groups(name: str, groups: tuple[str, ...]) -> None:
    if len(groups) > MAX_GROUPS or len(set(groups)) != len(groups):
        raise LocalProtocolError(f"{name} holds at most {MAX_GROUPS} distinct groups", code="invalid_value",
                                 field=name)
    for group in groups:
        check_text(name, group, 64, required=True)


def _check_version(value: int | None, *, required: bool = True) -> None:
    if value is None:
        if required:
            raise LocalProtocolError("program_version is required", code="missing", field="program_version")
        return
    check_range("program_version", value, 1, 2**31)


def _check_counts(name: str, pairs: tuple[tuple[str, int], ...], most: int, high: int) -> None:
    """(id, count) pairs: each id once, each count in 1..high, at most ``most`` pairs."""
    if not pairs:  # nothing to check, and most redemptions name no reward
        return
    if len(pairs) > most:
        raise LocalProtocolError(f"{name} names at most {most} entries", code="out_of_range", field=name)
    if len({key for key, _ in pairs}) != len(pairs):
        raise LocalProtocolError(f"{name} names an entry twice", code="invalid_value", field=name)
    for key, count in pairs:
        check_text(name, key, 64, required=True)
        check_range(name, count, 1, high)


@dataclass(frozen=True, slots=True)
class Consent:
    """What the customer agreed to, and who recorded it where."""

    terms_accepted: bool
    channels: tuple[str, ...]
    source: str
    staff: str | None
    at: int

    def __post_init__(self) -> None:
        check_types(self)
        if not self.terms_accepted:
            raise LocalProtocolError(
                "the customer must accept the program terms to enroll",
                code="consent_required",
                field="consent.terms_accepted",
            )
        if len(set(self.channels)) != len(self.channels) or not set(self.channels) <= CONSENT_CHANNELS:
            raise LocalProtocolError(
                "consent channels must be distinct values of phone, email",
                code="invalid_value",
                field="consent.channels",
            )
        if self.source not in CONSENT_SOURCES:
            raise LocalProtocolError(
                f"consent source must be one of {sorted(CONSENT_SOURCES)}",
                code="invalid_value",
                field="consent.source",
            )
        check_text("consent.staff", self.staff, 100)
        _check_time("consent.at", self.at)


@dataclass(frozen=True, slots=True, kw_only=True)
class Op:
    """Fields every operation has."""

    kind: ClassVar[OpKind]
    op_id: str
    at: int
    terminal_id: str
    customer_id: str

    def __post_init__(self) -> None:
        check_types(self)
        # The ids are str now: match them directly, and let the checks raise only for a miss
        # (this runs for every op of every batch the cloud decodes).
        if match_uuid7(self.op_id) is None:
            _check_id("op_id", self.op_id, v7=True)
        if match_uuid(self.terminal_id) is None:
            _check_id("terminal_id", self.terminal_id)
        if match_uuid(self.customer_id) is None:
            _check_id("customer_id", self.customer_id)
        if not MIN_TIME_MS <= self.at <= MAX_TIME_MS:
            _check_time("at", self.at)
        self._validate()

    def _validate(self) -> None:
        """Kind-specific checks; types are already right when this runs."""

    @property
    def debit(self) -> int:
        """Points this op takes from the balance when applied (never negative)."""
        return 0

    def to_wire(self) -> dict[str, Any]:
        build = _WIRE_BUILDERS.get(type(self))
        if build is None:
            build = _WIRE_BUILDERS[type(self)] = _wire_builder(type(self))
        return build(self)

    def digest(self) -> bytes:
        """SHA-256 of the canonical encoding: same op content, same digest."""
        # This thread's Packer: msgpack.packb makes one per call (with this option), which costs
        # about as much as packing an op. Per thread because a Packer has a buffer (reset after
        # each pack, and on an error).
        try:
            pack = _PACKERS.pack
        except AttributeError:
            pack = _PACKERS.pack = msgpack.Packer(use_bin_type=True).pack
        return hashlib.sha256(pack(self.to_wire())).digest()


_PACKERS = threading.local()


def _value_to_wire(value: object) -> object:
    """A field value that is not a plain string, integer, bool or None, as the wire carries it."""
    if type(value) is Consent:  # asdict's generic deep copy, spelled out: an enroll's hot path
        return {"terms_accepted": value.terms_accepted, "channels": list(value.channels), "source": value.source,
                "staff": value.staff, "at": value.at}
    if isinstance(value, Consent):
        wire = dataclasses.asdict(value)
        wire["channels"] = list(wire["channels"])
        return wire
    if isinstance(value, Sale):
        return value.to_wire()
    if isinstance(value, tuple):
        return [list(v) if isinstance(v, tuple) else v for v in value]
    return value


def _wire_builder(cls: type[Op]) -> Callable[[Op], dict[str, Any]]:
    """``to_wire`` for one op class: a generated map display, built once per class.

    ``{"kind": "earn", "op_id": o.op_id, ..., "sale": None if o.sale is None
    else convert(o.sale)}``: fields whose annotation admits only exact plain
    types (``str | None``, ``int``, ...) are taken as they are, the others
    (consent, sale, tuples) go through ``_value_to_wire``. Since check_types
    holds for every instance, this is the map the old per-value isinstance
    chain built, key for key in the same order, so the digest is the same
    bytes; generated source rather than a loop because every op the cloud
    applies is digested.
    """
    hints = typing.get_type_hints(cls)
    items = [f'"kind": {cls.kind.value!r}']
    for name in field_names(cls):
        if not name.isidentifier() or keyword.iskeyword(name):
            raise TypeError(f"{cls.__name__}.{name} cannot be a field of an op")  # a bug in this package
        if exact_types(hints[name]) is None:
            items.append(f"{name!r}: None if o.{name} is None else convert(o.{name})")
        else:
            items.append(f"{name!r}: o.{name}")
    build: Callable[[Op], dict[str, Any]] = eval("lambda o: {" + ", ".join(items) + "}", {"convert": _value_to_wire})
    return build


_WIRE_BUILDERS: dict[type, Callable[[Op], dict[str, Any]]] = {}


def _check_contact(name: str | None, phone: str | None, email: str | None, card: str | None) -> None:
    check_text("name", name, 200)
    check_text("phone", phone, 32)
    check_text("email", email, 254)
    check_text("card_code", card, 64)
    if email is not None and "@" not in email:
        raise LocalProtocolError("email must contain @", code="invalid_value", field="email")


@dataclass(frozen=True, slots=True, kw_only=True)
class Enroll(Op):
    kind: ClassVar[OpKind] = OpKind.ENROLL
    name: str
    phone: str | None
    email: str | None
    card_code: str | None
    consent: Consent
    groups: tuple[str, ...] = ()
    opted_out: bool = False
    #: The one-time bonus the edge showed, from ``program_version``'s settings (0: none).
    signup_bonus: int = 0
    program_version: int | None = None

    def _validate(self) -> None:
        check_text("name", self.name, 200, required=True)
        _check_contact(self.name, self.phone, self.email, self.card_code)
        if self.phone is None and self.email is None and self.card_code is None:
            raise LocalProtocolError(
                "a customer needs a phone, an email or a card code",
                code="missing",
                field="phone",
            )
        check_groups("groups", self.groups)
        check_range("signup_bonus", self.signup_bonus, 0, MAX_POINTS)
        _check_version(self.program_version, required=self.signup_bonus > 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateProfile(Op):
    """Set the given fields; None leaves a field unchanged; ``clear`` empties fields.

    ``groups`` replaces the customer's groups (``()`` empties them);
    ``opted_out`` takes the customer out of the program or back in.
    """

    kind: ClassVar[OpKind] = OpKind.UPDATE_PROFILE
    name: str | None
    phone: str | None
    email: str | None
    card_code: str | None
    clear: tuple[str, ...]
    groups: tuple[str, ...] | None = None
    opted_out: bool | None = None

    def _validate(self) -> None:
        _check_contact(self.name, self.phone, self.email, self.card_code)
        if self.groups is not None:
            check_groups("groups", self.groups)
        if self.name is not None and not self.name.strip():
            raise LocalProtocolError("name must not be empty", code="missing", field="name")
        allowed = {"phone", "email", "card_code"}
        if not set(self.clear) <= allowed or len(set(self.clear)) != len(self.clear):
            raise LocalProtocolError(
                "clear may list phone, email, card_code once each", code="invalid_value", field="clear"
            )
        for name in self.clear:
            if getattr(self, name) is not None:
                raise LocalProtocolError(f"{name} is both set and cleared", code="invalid_value", field=name)
        if all(getattr(self, n) is None for n in PROFILE_FIELDS) and not self.clear:
            raise LocalProtocolError("nothing to update", code="missing", field="name")


def _check_sale(sale_id: str) -> None:
    check_text("sale_id", sale_id, 64, required=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class Earn(Op):
    """Points earned by a fully paid sale, computed with the given program version.

    ``sale`` is the sale as the terminal sent it (None for an amount-only
    earn): the cloud recomputes the points from it, and refunds recompute
    what its returned lines earned.
    """

    kind: ClassVar[OpKind] = OpKind.EARN
    sale_id: str
    amount: int
    points: int
    program_version: int
    sale: Sale | None = None

    def _validate(self) -> None:
        _check_sale(self.sale_id)
        check_range("amount", self.amount, 1, MAX_AMOUNT)
        check_range("points", self.points, 0, MAX_POINTS)
        _check_version(self.program_version)
        if self.sale is not None:
            if self.sale.sale_id != self.sale_id:
                raise LocalProtocolError("the sale's id differs from sale_id", code="invalid_value",
                                         field="sale.sale_id")
            if self.sale.total != self.amount:
                raise LocalProtocolError("amount must be the sale's total", code="invalid_value", field="amount")
            if not self.sale.fully_paid:
                raise LocalProtocolError("only a fully paid sale earns", code="sale_not_paid", field="sale.state")


@dataclass(frozen=True, slots=True, kw_only=True)
class Redeem(Op):
    """Points spent on a sale: ``rewards`` ((reward_id, count), ...) from the
    catalog of a points program, or none for a loyalty tender (a currency
    program's balance spent as money) or a debit the terminal priced itself."""

    kind: ClassVar[OpKind] = OpKind.REDEEM
    sale_id: str
    points: int
    program_version: int
    rewards: tuple[tuple[str, int], ...] = ()

    def _validate(self) -> None:
        _check_sale(self.sale_id)
        check_range("points", self.points, 1, MAX_POINTS)
        _check_version(self.program_version)
        _check_counts("rewards", self.rewards, MAX_REDEEM_REWARDS, 100)

    @property
    def debit(self) -> int:
        return self.points


@dataclass(frozen=True, slots=True, kw_only=True)
class Void(Op):
    """Reverse a sale: take back what it earned, give back what it redeemed.

    ``reversed_points`` and ``returned_points`` are what the edge computed from
    its own records; the cloud recomputes both from its ledger (a redemption
    it refused gives nothing back) and reports any difference. After partial
    refunds, only what they left is reversed. ``program_version`` names the
    settings whose refund policy (clamp or negative) the edge applied.
    """

    kind: ClassVar[OpKind] = OpKind.VOID
    sale_id: str
    reversed_points: int
    returned_points: int
    program_version: int | None = None

    def _validate(self) -> None:
        _check_sale(self.sale_id)
        check_range("reversed_points", self.reversed_points, 0, MAX_POINTS)
        check_range("returned_points", self.returned_points, 0, MAX_POINTS)
        _check_version(self.program_version, required=False)

    @property
    def debit(self) -> int:
        return self.reversed_points


@dataclass(frozen=True, slots=True, kw_only=True)
class Refund(Op):
    """Lines of a sale returned: ``lines`` is ((line_id, quantity), ...).

    ``reversed_points`` is the drop in what the sale still earns and
    ``returned_points`` the redeemed share of the returned lines, as the edge
    computed them from the sale stored with its earn; the cloud recomputes
    both from the sale it stored and the returns it already applied, applies
    its own numbers and reports any difference.
    """

    kind: ClassVar[OpKind] = OpKind.REFUND
    sale_id: str
    lines: tuple[tuple[str, int], ...]
    reversed_points: int
    returned_points: int
    program_version: int | None = None

    def _validate(self) -> None:
        _check_sale(self.sale_id)
        if not self.lines:
            raise LocalProtocolError("a refund returns at least one line", code="missing", field="lines")
        _check_counts("lines", self.lines, MAX_LINES, MAX_QUANTITY)
        check_range("reversed_points", self.reversed_points, 0, MAX_POINTS)
        check_range("returned_points", self.returned_points, 0, MAX_POINTS)
        _check_version(self.program_version, required=False)

    @property
    def debit(self) -> int:
        return self.reversed_points


@dataclass(frozen=True, slots=True, kw_only=True)
class Adjust(Op):
    """A manual correction with a reason and the person who made it."""

    kind: ClassVar[OpKind] = OpKind.ADJUST
    points: int
    reason: str
    actor: str

    def _validate(self) -> None:
        check_range("points", self.points, -MAX_POINTS, MAX_POINTS)
        if self.points == 0:
            raise LocalProtocolError("points must not be zero", code="out_of_range", field="points")
        check_text("reason", self.reason, 500, required=True)
        check_text("actor", self.actor, 100, required=True)

    @property
    def debit(self) -> int:
        return max(0, -self.points)


AnyOp = Enroll | UpdateProfile | Earn | Redeem | Void | Adjust | Refund
OP_TYPES: dict[str, type[Op]] = {
    cls.kind.value: cls for cls in (Enroll, UpdateProfile, Earn, Redeem, Void, Adjust, Refund)
}
#: Fields that travel as arrays of [id, count] pairs and are tuples of tuples in Python.
_PAIR_FIELDS = ("rewards", "lines")


def op_from_wire(obj: object) -> Op:
    """Build an op from its decoded msgpack map; RemoteProtocolError if invalid."""
    if type(obj) is not dict and not isinstance(obj, Mapping):
        raise RemoteProtocolError("an op must be a map", code="bad_op")
    kind = obj.get("kind")
    cls = OP_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise RemoteProtocolError(f"unknown op kind {kind!r}", code="bad_op", field="kind")
    try:
        wire_keys, conversions = _DECODING.get(cls) or _decoding(cls)
        # The common case, a plain dict with exactly the op's keys, is copied in C and loses "kind";
        # any other map takes the general path and its errors.
        if type(obj) is dict and obj.keys() == wire_keys:
            kwargs = obj.copy()
            del kwargs["kind"]
        else:
            kwargs = fields_of(cls, {k: v for k, v in obj.items() if k != "kind"}, f"{kind} op")
        for name, convert in conversions:
            kwargs[name] = convert(kwargs[name])
        return cls(**kwargs)
    except LocalProtocolError as exc:
        code = "bad_op" if exc.code == "bad_shape" else exc.code
        raise RemoteProtocolError(exc.message, code=code, field=exc.field) from exc


def _consent_field(value: Any) -> Any:
    return _consent_from_wire(value) if value is not None else value


def _sale_field(value: Any) -> Any:
    return _sale_from_wire(value) if value is not None else value


def _list_field(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _pairs_field(value: Any) -> Any:
    if type(value) is tuple and not value:  # most redemptions name no reward
        return value
    if isinstance(value, list | tuple):
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    return value


#: What op_from_wire does to a field after reading it, in this order (JSON gives lists, msgpack
#: here gives tuples; nested maps become their dataclasses).
_CONVERSIONS: tuple[tuple[str, Callable[[Any], Any]], ...] = (
    ("consent", _consent_field),
    ("sale", _sale_field),
    ("clear", _list_field),
    ("groups", _list_field),
    *((name, _pairs_field) for name in _PAIR_FIELDS),
)
_DECODING: dict[type, tuple[frozenset[str], tuple[tuple[str, Callable[[Any], Any]], ...]]] = {}


def _decoding(cls: type[Op]) -> tuple[frozenset[str], tuple[tuple[str, Callable[[Any], Any]], ...]]:
    """The class's wire keys (its fields and "kind") and the conversions of the fields it has."""
    names = field_names(cls)
    found = _DECODING[cls] = (field_set(cls) | {"kind"},
                              tuple((name, convert) for name, convert in _CONVERSIONS if name in names))
    return found


def _sale_from_wire(obj: object) -> Sale:
    try:
        return sale_from_wire(obj)
    except LocalProtocolError as exc:
        field = "sale" if exc.field in (None, "sale") else f"sale.{exc.field}"
        raise LocalProtocolError(exc.message, code=exc.code, field=field) from exc


def _consent_from_wire(obj: object) -> Consent:
    try:
        kwargs = fields_of(Consent, obj, "consent")
    except LocalProtocolError as exc:
        field = exc.field if exc.field == "consent" else f"consent.{exc.field}"
        raise LocalProtocolError(exc.message, code=exc.code, field=field) from exc
    if isinstance(kwargs["channels"], list):
        kwargs["channels"] = tuple(kwargs["channels"])
    return Consent(**kwargs)
