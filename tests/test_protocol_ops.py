"""Ops: validation when built, the wire round trip, digests and UUIDv7 ids."""

from __future__ import annotations

import dataclasses
import itertools
import os
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import msgpack
import pytest

from protocol import (
    OP_TYPES,
    Adjust,
    Consent,
    Earn,
    Enroll,
    LocalProtocolError,
    Op,
    Redeem,
    Refund,
    RemoteProtocolError,
    UpdateProfile,
    Void,
    is_uuid7,
    op_from_wire,
    uuid7,
)
from protocol.ids import uuid7_time_ms
from protocol.ops import MAX_TIME_MS, MIN_TIME_MS
from protocol.sale import Sale, SaleLine, SaleState, Tender, TenderKind
from protocol.validate import MAX_AMOUNT, MAX_POINTS

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
OP_ID = "019b76da-a800-7000-8406-080a0c0e1012"
TERMINAL = "01234567-89ab-4cde-8f01-23456789abcd"
CUSTOMER = "11111111-2222-4333-8444-555555555555"


def consent_kw(**overrides: Any) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "terms_accepted": True,
        "channels": ("email",),
        "source": "pos",
        "staff": "Ana",
        "at": T0,
    }
    kw.update(overrides)
    return kw


def consent(**overrides: Any) -> Consent:
    return Consent(**consent_kw(**overrides))


def base_kw(cls: type[Op]) -> dict[str, Any]:
    common: dict[str, Any] = {"op_id": OP_ID, "at": T0, "terminal_id": TERMINAL, "customer_id": CUSTOMER}
    specific: dict[type[Op], dict[str, Any]] = {
        Enroll: {
            "name": "Ana Lima",
            "phone": "+351 912 345 678",
            "email": "ana@example.com",
            "card_code": None,
            "consent": consent(),
        },
        UpdateProfile: {
            "name": None,
            "phone": "+351 900 000 000",
            "email": None,
            "card_code": None,
            "clear": ("email",),
        },
        Earn: {"sale_id": "S-1", "amount": 1250, "points": 12, "program_version": 1},
        Redeem: {"sale_id": "S-2", "points": 100, "program_version": 1},
        Void: {"sale_id": "S-1", "reversed_points": 12, "returned_points": 0, "program_version": 1},
        Adjust: {"points": -5, "reason": "double scan", "actor": "manager-1"},
        Refund: {"sale_id": "S-1", "lines": (("1", 2), ("2", 1)), "reversed_points": 7, "returned_points": 3,
                 "program_version": 1},
    }
    return {**common, **specific[cls]}


OpT = TypeVar("OpT", bound=Op)


def build(cls: type[OpT], **overrides: Any) -> OpT:
    return cls(**{**base_kw(cls), **overrides})


ALL_OP_CLASSES: list[type[Op]] = [Enroll, UpdateProfile, Earn, Redeem, Void, Adjust, Refund]
SALE = Sale("S-1", (SaleLine("1", "latte", "drink", 2, 450, 0, 90), SaleLine("2", "mug", None, 1, 1_200, 200, 0)),
            0, (Tender(TenderKind.LOYALTY, 300), Tender(TenderKind.CARD, 1_690, "tok_1")), SaleState.PAID)


# --------------------------------------------------------- valid ops build


@pytest.mark.parametrize("cls", ALL_OP_CLASSES, ids=lambda c: c.__name__)
def test_valid_op_builds_and_is_frozen(cls: type[Op]) -> None:
    op = build(cls)
    assert op.op_id == OP_ID
    with pytest.raises(dataclasses.FrozenInstanceError):
        op.at = T0 + 1  # type: ignore[misc]


def test_debits() -> None:
    assert build(Earn).debit == 0
    assert build(Redeem, points=70).debit == 70
    assert build(Void, reversed_points=12, returned_points=30).debit == 12
    assert build(Refund, reversed_points=7, returned_points=30).debit == 7
    assert build(Adjust, points=-5).debit == 5
    assert build(Adjust, points=5).debit == 0


def test_limits_are_inclusive() -> None:
    assert build(Earn, amount=MAX_AMOUNT, points=MAX_POINTS).amount == MAX_AMOUNT
    assert build(Earn, amount=1, points=0).points == 0
    assert build(Adjust, points=-MAX_POINTS).debit == MAX_POINTS
    assert build(Earn, at=MIN_TIME_MS).at == MIN_TIME_MS
    assert build(Earn, at=MAX_TIME_MS).at == MAX_TIME_MS
    assert build(Earn, sale_id="s" * 64).sale_id == "s" * 64
    assert build(Adjust, reason="r" * 500, actor="a" * 100).points == -5


def test_enroll_with_only_a_card_code_is_valid() -> None:
    op = build(Enroll, phone=None, email=None, card_code="CARD-0001", consent=consent(channels=()))
    assert isinstance(op, Enroll) and op.card_code == "CARD-0001"


# ------------------------------------------------- invalid ops are refused

Case = tuple[str, Callable[[], object], str, str | None]

INVALID: list[Case] = [
    # wrong types: bool is not an int, floats are never money or points
    ("amount-bool", lambda: build(Earn, amount=True), "amount", "invalid_type"),
    ("amount-float", lambda: build(Earn, amount=12.5), "amount", "invalid_type"),
    ("amount-integral-float", lambda: build(Earn, amount=1250.0), "amount", "invalid_type"),
    ("amount-str", lambda: build(Earn, amount="1250"), "amount", "invalid_type"),
    ("amount-none", lambda: build(Earn, amount=None), "amount", "invalid_type"),
    ("points-bool", lambda: build(Redeem, points=True), "points", "invalid_type"),
    ("points-float", lambda: build(Redeem, points=1.0), "points", "invalid_type"),
    ("at-float", lambda: build(Earn, at=float(T0)), "at", "invalid_type"),
    ("at-bool", lambda: build(Earn, at=False), "at", "invalid_type"),
    ("program-version-bool", lambda: build(Earn, program_version=True), "program_version", "invalid_type"),
    ("op-id-bytes", lambda: build(Earn, op_id=OP_ID.encode()), "op_id", "invalid_type"),
    ("sale-id-int", lambda: build(Earn, sale_id=7), "sale_id", "invalid_type"),
    ("name-none", lambda: build(Enroll, name=None), "name", "invalid_type"),
    ("clear-list", lambda: build(UpdateProfile, clear=["email"]), "clear", "invalid_type"),
    ("clear-of-ints", lambda: build(UpdateProfile, clear=(1,)), "clear", "invalid_type"),
    ("consent-dict", lambda: build(Enroll, consent=consent_kw()), "consent", "invalid_type"),
    ("consent-channels-list", lambda: consent(channels=["email"]), "channels", "invalid_type"),
    ("consent-terms-int", lambda: consent(terms_accepted=1), "terms_accepted", "invalid_type"),
    # ranges: negative, zero where not allowed, huge
    ("amount-zero", lambda: build(Earn, amount=0), "amount", "out_of_range"),
    ("amount-negative", lambda: build(Earn, amount=-1), "amount", "out_of_range"),
    ("amount-over-max", lambda: build(Earn, amount=MAX_AMOUNT + 1), "amount", "out_of_range"),
    ("amount-2**64", lambda: build(Earn, amount=2**64), "amount", "out_of_range"),
    ("earn-points-negative", lambda: build(Earn, points=-1), "points", "out_of_range"),
    ("earn-points-over-max", lambda: build(Earn, points=MAX_POINTS + 1), "points", "out_of_range"),
    ("program-version-zero", lambda: build(Earn, program_version=0), "program_version", "out_of_range"),
    ("program-version-huge", lambda: build(Redeem, program_version=2**31 + 1), "program_version",
     "out_of_range"),
    ("redeem-zero", lambda: build(Redeem, points=0), "points", "out_of_range"),
    ("redeem-negative", lambda: build(Redeem, points=-10), "points", "out_of_range"),
    ("redeem-huge", lambda: build(Redeem, points=10**30), "points", "out_of_range"),
    ("void-reversed-negative", lambda: build(Void, reversed_points=-1), "reversed_points", "out_of_range"),
    ("void-returned-huge", lambda: build(Void, returned_points=MAX_POINTS + 1), "returned_points",
     "out_of_range"),
    ("refund-no-lines", lambda: build(Refund, lines=()), "lines", "missing"),
    ("refund-line-twice", lambda: build(Refund, lines=(("1", 1), ("1", 1))), "lines", "invalid_value"),
    ("refund-quantity-zero", lambda: build(Refund, lines=(("1", 0),)), "lines", "out_of_range"),
    ("refund-reversed-negative", lambda: build(Refund, reversed_points=-1), "reversed_points", "out_of_range"),
    ("redeem-reward-count-zero", lambda: build(Redeem, rewards=(("coffee", 0),)), "rewards", "out_of_range"),
    ("redeem-reward-twice", lambda: build(Redeem, rewards=(("a", 1), ("a", 2))), "rewards", "invalid_value"),
    ("enroll-group-twice", lambda: build(Enroll, groups=("staff", "staff")), "groups", "invalid_value"),
    ("enroll-group-blank", lambda: build(Enroll, groups=(" ",)), "groups", "missing"),
    ("enroll-bonus-without-version", lambda: build(Enroll, signup_bonus=50), "program_version", "missing"),
    ("enroll-bonus-negative", lambda: build(Enroll, signup_bonus=-1), "signup_bonus", "out_of_range"),
    ("update-opted-out-int", lambda: build(UpdateProfile, opted_out=1), "opted_out", "invalid_type"),
    ("earn-sale-dict", lambda: build(Earn, sale=SALE.to_wire()), "sale", "invalid_type"),
    ("adjust-zero", lambda: build(Adjust, points=0), "points", "out_of_range"),
    ("adjust-under-min", lambda: build(Adjust, points=-MAX_POINTS - 1), "points", "out_of_range"),
    ("adjust-over-max", lambda: build(Adjust, points=MAX_POINTS + 1), "points", "out_of_range"),
    ("at-zero", lambda: build(Earn, at=0), "at", "out_of_range"),
    ("at-before-2020", lambda: build(Earn, at=MIN_TIME_MS - 1), "at", "out_of_range"),
    ("at-after-2100", lambda: build(Earn, at=MAX_TIME_MS + 1), "at", "out_of_range"),
    ("at-seconds-not-ms", lambda: build(Earn, at=T0 // 1000), "at", "out_of_range"),
    ("consent-at-zero", lambda: consent(at=0), "consent.at", "out_of_range"),
    # ids
    ("op-id-garbage", lambda: build(Earn, op_id="not-a-uuid"), "op_id", "invalid_id"),
    ("op-id-v4", lambda: build(Earn, op_id=str(uuid.UUID(int=0x1234, version=4))), "op_id", "invalid_id"),
    ("op-id-upper", lambda: build(Earn, op_id=OP_ID.upper()), "op_id", "invalid_id"),
    ("op-id-bad-variant", lambda: build(Earn, op_id=OP_ID[:19] + "c" + OP_ID[20:]), "op_id", "invalid_id"),
    ("op-id-no-dashes", lambda: build(Earn, op_id=OP_ID.replace("-", "")), "op_id", "invalid_id"),
    ("op-id-braces", lambda: build(Earn, op_id="{" + OP_ID + "}"), "op_id", "invalid_id"),
    ("op-id-empty", lambda: build(Earn, op_id=""), "op_id", "invalid_id"),
    ("terminal-id-garbage", lambda: build(Earn, terminal_id="till-1"), "terminal_id", "invalid_id"),
    ("customer-id-short", lambda: build(Earn, customer_id=CUSTOMER[:-1]), "customer_id", "invalid_id"),
    ("customer-id-newline", lambda: build(Earn, customer_id=CUSTOMER + "\n"), "customer_id", "invalid_id"),
    # text: required, too long, control characters
    ("sale-id-empty", lambda: build(Earn, sale_id=""), "sale_id", "missing"),
    ("sale-id-blank", lambda: build(Redeem, sale_id="   "), "sale_id", "missing"),
    ("sale-id-too-long", lambda: build(Void, sale_id="s" * 65), "sale_id", "too_long"),
    ("sale-id-newline", lambda: build(Earn, sale_id="S-1\nS-2"), "sale_id", "invalid_text"),
    ("sale-id-nul", lambda: build(Earn, sale_id="S\x00"), "sale_id", "invalid_text"),
    ("sale-id-del", lambda: build(Earn, sale_id="S\x7f"), "sale_id", "invalid_text"),
    ("enroll-name-empty", lambda: build(Enroll, name=""), "name", "missing"),
    ("enroll-name-too-long", lambda: build(Enroll, name="n" * 201), "name", "too_long"),
    ("enroll-name-tab", lambda: build(Enroll, name="Ana\tLima"), "name", "invalid_text"),
    ("enroll-phone-too-long", lambda: build(Enroll, phone="9" * 33), "phone", "too_long"),
    ("enroll-email-no-at", lambda: build(Enroll, email="ana.example.com"), "email", "invalid_value"),
    ("enroll-email-too-long", lambda: build(Enroll, email="a@" + "e" * 253), "email", "too_long"),
    ("enroll-card-too-long", lambda: build(Enroll, card_code="c" * 65), "card_code", "too_long"),
    ("enroll-card-escape", lambda: build(Enroll, card_code="\x1b[2J"), "card_code", "invalid_text"),
    ("adjust-reason-empty", lambda: build(Adjust, reason=""), "reason", "missing"),
    ("adjust-reason-too-long", lambda: build(Adjust, reason="r" * 501), "reason", "too_long"),
    ("adjust-actor-blank", lambda: build(Adjust, actor=" "), "actor", "missing"),
    ("adjust-actor-cr", lambda: build(Adjust, actor="boss\r"), "actor", "invalid_text"),
    ("consent-staff-too-long", lambda: consent(staff="s" * 101), "consent.staff", "too_long"),
    ("consent-staff-control", lambda: consent(staff="a\x01"), "consent.staff", "invalid_text"),
    # business rules
    ("consent-without-terms", lambda: consent(terms_accepted=False), "consent.terms_accepted",
     "consent_required"),
    ("consent-unknown-channel", lambda: consent(channels=("sms",)), "consent.channels", "invalid_value"),
    ("consent-repeated-channel", lambda: consent(channels=("email", "email")), "consent.channels",
     "invalid_value"),
    ("consent-unknown-source", lambda: consent(source="web"), "consent.source", "invalid_value"),
    ("enroll-without-contact", lambda: build(Enroll, phone=None, email=None, card_code=None), "phone",
     "missing"),
    ("update-nothing", lambda: build(UpdateProfile, phone=None, clear=()), "name", "missing"),
    ("update-blank-name", lambda: build(UpdateProfile, name="  "), "name", "missing"),
    ("update-clear-name", lambda: build(UpdateProfile, clear=("name",)), "clear", "invalid_value"),
    ("update-clear-twice", lambda: build(UpdateProfile, clear=("email", "email")), "clear",
     "invalid_value"),
    ("update-set-and-clear", lambda: build(UpdateProfile, phone="1", clear=("phone",)), "phone",
     "invalid_value"),
    ("update-email-no-at", lambda: build(UpdateProfile, email="nope"), "email", "invalid_value"),
]


@pytest.mark.parametrize(("make", "field", "code"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_op_is_refused_naming_the_field(
    make: Callable[[], object], field: str, code: str | None
) -> None:
    with pytest.raises(LocalProtocolError) as info:
        make()
    assert info.value.field == field
    assert info.value.code == code
    assert info.value.status_hint == 400
    assert info.value.message


# --------------------------------------------------------------- the wire


@pytest.mark.parametrize("cls", ALL_OP_CLASSES, ids=lambda c: c.__name__)
def test_round_trip_through_wire_and_msgpack(cls: type[Op]) -> None:
    op = build(cls)
    wire = op.to_wire()
    assert wire["kind"] == cls.kind.value
    assert OP_TYPES[wire["kind"]] is cls
    assert op_from_wire(wire) == op
    # what a peer actually decodes: msgpack with tuples instead of lists
    decoded = msgpack.unpackb(msgpack.packb(wire, use_bin_type=True), raw=False, use_list=False)
    assert op_from_wire(decoded) == op


def test_wire_form_is_plain_msgpack_types() -> None:
    wire = build(Enroll).to_wire()
    assert wire == {
        "kind": "enroll",
        "op_id": OP_ID,
        "at": T0,
        "terminal_id": TERMINAL,
        "customer_id": CUSTOMER,
        "name": "Ana Lima",
        "phone": "+351 912 345 678",
        "email": "ana@example.com",
        "card_code": None,
        "consent": {"terms_accepted": True, "channels": ["email"], "source": "pos", "staff": "Ana", "at": T0},
        "groups": [],
        "opted_out": False,
        "signup_bonus": 0,
        "program_version": None,
    }


def test_an_earn_carries_its_sale_and_a_redemption_its_rewards() -> None:
    earn = build(Earn, sale=SALE, amount=SALE.total)
    wire = earn.to_wire()
    assert wire["sale"]["tenders"][1] == {"kind": "card", "amount": 1_690, "card_token": "tok_1"}
    decoded = msgpack.unpackb(msgpack.packb(wire, use_bin_type=True), raw=False, use_list=False)
    assert op_from_wire(decoded) == earn and op_from_wire(decoded).sale == SALE
    redeem = build(Redeem, points=150, rewards=(("coffee", 2), ("five-off", 1)))
    assert op_from_wire(msgpack.unpackb(msgpack.packb(redeem.to_wire()), raw=False, use_list=False)) == redeem
    assert redeem.to_wire()["rewards"] == [["coffee", 2], ["five-off", 1]]


@pytest.mark.parametrize(("change", "field", "code"), [
    ({"sale": {**SALE.to_wire(), "lines": [{**SALE.to_wire()["lines"][0], "quantity": 0}]}},
     "sale.lines[0].quantity", "out_of_range"),
    ({"sale": {**SALE.to_wire(), "tenders": [{"kind": "card", "amount": 1_990, "card_token": "4242424242424242"}]}},
     "sale.tenders[0].card_token", "card_number_refused"),
    ({"sale": {**SALE.to_wire(), "colour": "red"}}, "sale.colour", "bad_op"),
    ({"sale": [1, 2]}, "sale", "bad_op"),
    ({"sale": {**SALE.to_wire(), "sale_id": "S-2"}}, "sale.sale_id", "invalid_value"),
    ({"amount": 1}, "amount", "invalid_value"),
    ({"sale": {**SALE.to_wire(), "state": "open"}}, "sale.state", "sale_not_paid"),
])
def test_a_bad_sale_in_an_earn_names_its_field(change: dict[str, Any], field: str, code: str) -> None:
    wire = {**build(Earn, sale=SALE, amount=SALE.total).to_wire(), **change}
    with pytest.raises(RemoteProtocolError) as info:
        op_from_wire(wire)
    assert (info.value.field, info.value.code) == (field, code)


@pytest.mark.parametrize("cls", ALL_OP_CLASSES, ids=lambda c: c.__name__)
def test_unknown_field_is_refused(cls: type[Op]) -> None:
    wire = {**build(cls).to_wire(), "bonus": 1000}
    with pytest.raises(RemoteProtocolError) as info:
        op_from_wire(wire)
    assert info.value.field == "bonus"
    assert info.value.code == "bad_op"


@pytest.mark.parametrize("cls", ALL_OP_CLASSES, ids=lambda c: c.__name__)
def test_each_missing_field_is_refused(cls: type[Op]) -> None:
    wire = build(cls).to_wire()
    for name in wire:
        if name == "kind":
            continue
        partial = {k: v for k, v in wire.items() if k != name}
        with pytest.raises(RemoteProtocolError) as info:
            op_from_wire(partial)
        assert info.value.field == name


@pytest.mark.parametrize("kind", ["return", "EARN", "", None, 1, b"earn", True])
def test_unknown_or_missing_kind_is_refused(kind: object) -> None:
    wire = build(Earn).to_wire()
    wire["kind"] = kind
    with pytest.raises(RemoteProtocolError) as info:
        op_from_wire(wire)
    assert info.value.field == "kind"
    del wire["kind"]
    with pytest.raises(RemoteProtocolError) as info:
        op_from_wire(wire)
    assert info.value.field == "kind"


@pytest.mark.parametrize("obj", [None, 1, "earn", b"", [], ("kind", "earn"), [("kind", "earn")]])
def test_an_op_must_be_a_map(obj: object) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        op_from_wire(obj)
    assert info.value.code == "bad_op"


@pytest.mark.parametrize(
    ("field", "value"),
    [("amount", 12.5), ("amount", True), ("amount", -5), ("op_id", "nope"), ("sale_id", "")],
)
def test_invalid_values_from_a_peer_are_remote_errors_with_the_field(field: str, value: object) -> None:
    wire = build(Earn).to_wire()
    wire[field] = value
    with pytest.raises(RemoteProtocolError) as info:
        op_from_wire(wire)
    assert info.value.field == field
    assert not isinstance(info.value, LocalProtocolError)


@pytest.mark.parametrize(
    "bad_consent",
    [None, "yes", [], {"terms_accepted": True}, {**consent_kw(), "extra": 1}],
)
def test_malformed_consent_from_a_peer(bad_consent: object) -> None:
    wire = build(Enroll).to_wire()
    wire["consent"] = bad_consent
    with pytest.raises(RemoteProtocolError) as info:
        op_from_wire(wire)
    assert info.value.field is not None and info.value.field.split(".")[0] == "consent"


def test_consent_without_terms_from_a_peer() -> None:
    wire = build(Enroll).to_wire()
    wire["consent"] = {**wire["consent"], "terms_accepted": False}
    with pytest.raises(RemoteProtocolError) as info:
        op_from_wire(wire)
    assert info.value.field == "consent.terms_accepted"
    assert info.value.code == "consent_required"


# ------------------------------------------------------------------ digest


def test_digest_is_stable() -> None:
    op = build(Earn)
    assert op.digest() == build(Earn).digest() == op_from_wire(op.to_wire()).digest()
    # pinned: a change here changes every stored digest
    assert op.digest().hex() == "543285577fd2a6d1b7d4c757cde2fa5b6ae72c4b979cd60dc29773dce2b4f7e9"


@pytest.mark.parametrize("cls", ALL_OP_CLASSES, ids=lambda c: c.__name__)
def test_digest_changes_with_every_field(cls: type[Op]) -> None:
    op = build(cls)
    other_values: dict[str, Any] = {
        "op_id": "019b76da-a801-70a0-8e10-121416181a1c",
        "at": T0 + 1,
        "terminal_id": CUSTOMER,
        "customer_id": TERMINAL,
        "name": "Ana Maria",
        "phone": "+351 1",
        "email": "x@y",
        "card_code": "C-9",
        "consent": consent(channels=("email", "phone")),
        "clear": ("card_code",),
        "sale_id": "S-99",
        "amount": 1251,
        "points": 13 if cls is not Adjust else -6,
        "program_version": 2,
        "reversed_points": 11,
        "returned_points": 1,
        "reason": "other",
        "actor": "manager-2",
        "groups": ("staff",),
        "opted_out": True,
        "signup_bonus": 50,
        "sale": SALE,
        "rewards": (("coffee", 1),),
        "lines": (("1", 1),),
    }
    for f in dataclasses.fields(op):
        changes = {f.name: other_values[f.name]}
        if cls is UpdateProfile and f.name in ("email", "clear"):
            # a field cannot be both set and cleared
            changes = {"email": "x@y", "clear": ()} if f.name == "email" else changes
        if f.name == "sale":
            changes["amount"] = SALE.total
        if f.name == "signup_bonus":
            changes["program_version"] = 2
        if cls is UpdateProfile and f.name == "opted_out":
            changes = {"opted_out": False}
        changed = dataclasses.replace(op, **changes)
        assert changed.digest() != op.digest(), f.name


def test_digest_depends_on_kind() -> None:
    redeem = build(Redeem, sale_id="S-1", points=12, program_version=1)
    adjust = build(Adjust, points=12)
    assert len({redeem.digest(), adjust.digest(), build(Earn).digest()}) == 3


# ------------------------------------------------------------------ uuid7


def counting_randbytes() -> Callable[[int], bytes]:
    counter = itertools.count()
    return lambda n: bytes((next(counter) + i) % 256 for i in range(n))


def test_uuid7_layout() -> None:
    value = uuid7(T0, lambda n: b"\xff" * n)
    parsed = uuid.UUID(value)
    assert str(parsed) == value  # canonical lower-case form
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert value[14] == "7" and value[19] in "89ab"
    assert uuid7_time_ms(value) == T0
    assert value == "019b76da-a800-7fff-bfff-ffffffffffff"
    zero = uuid7(T0, bytes)
    assert zero == "019b76da-a800-7000-8000-000000000000"
    assert is_uuid7(value) and is_uuid7(zero)


def test_uuid7_is_deterministic_given_randbytes() -> None:
    assert uuid7(T0, counting_randbytes()) == uuid7(T0, counting_randbytes()) == OP_ID


@pytest.mark.parametrize("now_ms", [0, 1, T0, MAX_TIME_MS, (1 << 48) - 1])
def test_uuid7_timestamp_recoverable(now_ms: int) -> None:
    value = uuid7(now_ms)
    assert uuid7_time_ms(value) == now_ms
    assert is_uuid7(value)


def test_uuid7_is_monotonic_across_milliseconds() -> None:
    ids = [uuid7(T0 + i, os.urandom) for i in range(2000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    # byte order agrees with string order, so databases index them in time order
    assert [uuid.UUID(i).bytes for i in ids] == sorted(uuid.UUID(i).bytes for i in ids)


@pytest.mark.parametrize("now_ms", [-1, 1 << 48, 2**64])
def test_uuid7_refuses_out_of_range_timestamps(now_ms: int) -> None:
    with pytest.raises(LocalProtocolError) as info:
        uuid7(now_ms)
    assert info.value.field == "now_ms"


def test_is_uuid7_rejects_other_versions_and_forms() -> None:
    assert not is_uuid7(str(uuid.uuid4()))
    assert not is_uuid7(OP_ID.upper())
    assert not is_uuid7(uuid.UUID(OP_ID))
    assert not is_uuid7(None)
    assert not is_uuid7(OP_ID[:19] + "0" + OP_ID[20:])


def test_extra_keys_of_mixed_types_are_a_protocol_error() -> None:
    # msgpack maps may have str and bytes keys side by side; found by the fuzz tests
    wire: dict[Any, Any] = {**build(Earn).to_wire(), "": None, b"": None}
    with pytest.raises(RemoteProtocolError) as info:
        op_from_wire(wire)
    assert info.value.code == "bad_op"
    assert info.value.field in ("", "b''")


# ------------------------------------------- every wire shape, pinned, and the type checks' two paths


def every_shape() -> dict[str, Op]:
    """One op of each kind with every nested shape set: consent, groups, a sale, pairs."""
    from protocol.claim_ops import NO_CUSTOMER, Claim, UnclaimedSale

    common: dict[str, Any] = {"op_id": OP_ID, "at": T0, "terminal_id": TERMINAL}
    return {
        "enroll": build(Enroll, groups=("staff", "vip"), signup_bonus=50, program_version=2),
        "update_profile": build(UpdateProfile, name="Ana M", groups=(), opted_out=True),
        "earn": build(Earn, sale=SALE, amount=SALE.total),
        "redeem": build(Redeem, rewards=(("coffee", 1), ("mug", 2))),
        "void": build(Void),
        "adjust": build(Adjust),
        "refund": build(Refund),
        "unclaimed_sale": UnclaimedSale(**common, customer_id=NO_CUSTOMER, sale_id="S-1", amount=SALE.total,
                                        program_version=1, sale=SALE, claim_hash="ab" * 32, expires_at=T0 + 1),
        "claim": Claim(**common, customer_id=CUSTOMER, sale_id="S-1", points=17, program_version=1),
    }


#: Computed with the encoder before it was generated per class: a change here changes stored digests.
PINNED_DIGESTS = {
    "adjust": "261bd23f6160e36ab916ae8471b8fca82ec34762fce65da33aecf3cd22754051",
    "claim": "f976b5447c7b7fe6fc79bd8c646bb03529509fb1f9a952be21ac11e0eb593bdf",
    "earn": "e835d051a756f672d7d2ac2e92e9a7068fcddcb700a45ac286917e5c973b1d3a",
    "enroll": "6e3a376ca4a6b904dd0d6618678e83e0995965ee8efb7aa0b9b854df7ff37d15",
    "redeem": "286b542ecddc6f2b20c033e9b1b40d68d3f02493c86db802c3b723210239ce2c",
    "refund": "1e38bd463932e221d345e43ff77054a68f521132963d72ca9c95b365d844acdb",
    "unclaimed_sale": "c17147a8bed79b19ed71d91890f1a605dcb0a0b22bf330cff082d650bc691126",
    "update_profile": "b2d7e877f1c3eff6e6ccee9838b9ffbbed8cdc0da712b541aa607d0cb0f9a71c",
    "void": "e9aba1f320f4a88f59254182e3acd855804eb1f2be8f1476e8fd306e8869cfcc",
}


@pytest.mark.parametrize("name", sorted(PINNED_DIGESTS))
def test_digest_of_every_op_shape_is_pinned(name: str) -> None:
    op = every_shape()[name]
    assert op.digest().hex() == PINNED_DIGESTS[name]
    wire = msgpack.unpackb(msgpack.packb(op.to_wire(), use_bin_type=True), raw=False, use_list=False)
    assert op_from_wire(wire) == op
    assert op_from_wire(wire).digest() == op.digest()


def test_type_checks_take_the_first_wrong_field_and_refuse_subclasses() -> None:
    class Text(str):
        pass

    with pytest.raises(LocalProtocolError) as err:
        build(Earn, sale_id=Text("S-1"))
    assert (err.value.code, err.value.field) == ("invalid_type", "sale_id")
    with pytest.raises(LocalProtocolError) as err:  # in field order, whatever the fast path saw
        build(Earn, program_version="1", amount=True, sale_id=None)
    assert (err.value.code, err.value.field) == ("invalid_type", "sale_id")
    with pytest.raises(LocalProtocolError) as err:  # a tuple's items are checked too
        build(Redeem, rewards=(("coffee", True),))
    assert (err.value.code, err.value.field) == ("invalid_type", "rewards")
    with pytest.raises(LocalProtocolError) as err:
        build(UpdateProfile, groups=("staff", Text("vip")))
    assert (err.value.code, err.value.field) == ("invalid_type", "groups")


def test_a_consent_subclass_is_still_a_consent_on_the_wire() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class PaperConsent(Consent):
        pass

    plain, paper = build(Enroll), build(Enroll, consent=PaperConsent(**consent_kw()))
    assert paper.to_wire() == plain.to_wire()
    assert paper.digest() == plain.digest()
