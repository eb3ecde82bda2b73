"""The bodies that travel inside signed envelopes, and their codecs.

    edge ── BATCH (store key) ─────────▶ cloud     ops, gap-free seq, hash chain
    edge ◀─ ACK (cloud key) ─────────── cloud     per-op results, balances
    edge ── PULL (store key) ──────────▶ cloud     cursor + fresh nonce + newest cloud key known
    edge ◀─ DOWNLINK (cloud key) ────── cloud     changes since cursor, echoes nonce,
                                                  announcements of newer cloud keys

Acks name the batch hash they answer and downlinks echo the pull's nonce,
so neither can be replayed onto another request. The messages about keys
(enrollment, rotations) are in ``key_messages``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .envelope import MAX_ENVELOPE_BYTES, MessageType, open_envelope, safe_unpackb, seal
from .errors import LocalProtocolError, RemoteProtocolError
from .expiry import MAX_EXPIRING
from .ids import is_uuid, match_uuid
from .ops import MAX_TIME_MS, MIN_TIME_MS, Op, check_groups, op_from_wire
from .rules import Program
from .sale import looks_like_card_number
from .validate import MAX_POINTS, check_range, check_text, check_types, fields_of, to_wire

BODY_VERSION = 1
MAX_BATCH_OPS = 5000
MAX_DOWNLINK_CUSTOMERS = 5000
#: Cloud key announcements one downlink (or one key chain) carries at most.
MAX_CLOUD_KEYS = 32
HASH_LEN = 32
NONCE_LEN = 16
GENESIS_HASH = bytes(HASH_LEN)
_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")

T = TypeVar("T")


def check_slug(name: str, value: str) -> None:
    if not _SLUG_RE.fullmatch(value):
        raise LocalProtocolError(
            f"{name} must be 1-63 lower-case letters, digits or dashes", code="invalid_id", field=name
        )


def _check_uuid(name: str, value: str) -> None:
    if not is_uuid(value):
        raise LocalProtocolError(f"{name} must be a UUID", code="invalid_id", field=name)


def _check_bytes(name: str, value: bytes, length: int) -> None:
    if len(value) != length:
        raise LocalProtocolError(f"{name} must be {length} bytes", code="bad_shape", field=name)


def _check_time(name: str, value: int) -> None:
    check_range(name, value, MIN_TIME_MS, MAX_TIME_MS)


def check_envelopes(name: str, envelopes: tuple[bytes, ...], type_: MessageType, limit: int) -> None:
    """A bounded list of envelopes of one type, still sealed (each is opened on its own)."""
    if len(envelopes) > limit:
        raise LocalProtocolError(f"{name} holds at most {limit} envelopes", code="out_of_range", field=name)
    if any(len(e) > MAX_ENVELOPE_BYTES[type_] for e in envelopes):
        raise LocalProtocolError(f"an envelope in {name} is too large", code="too_large", field=name)


def body_hash(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()


@dataclass(frozen=True, slots=True)
class Batch:
    store_id: str
    node_id: str
    key_id: str
    seq: int
    prev_hash: bytes
    at: int
    ops: tuple[Op, ...]

    def __post_init__(self) -> None:
        check_types(self)
        check_slug("store_id", self.store_id)
        _check_uuid("node_id", self.node_id)
        check_text("key_id", self.key_id, 64, required=True)
        check_range("seq", self.seq, 1, 2**62)
        _check_bytes("prev_hash", self.prev_hash, HASH_LEN)
        _check_time("at", self.at)
        if not 1 <= len(self.ops) <= MAX_BATCH_OPS:
            raise LocalProtocolError(
                f"a batch holds 1 to {MAX_BATCH_OPS} ops", code="out_of_range", field="ops"
            )
        if len({op.op_id for op in self.ops}) != len(self.ops):
            raise LocalProtocolError("op ids repeat within a batch", code="duplicate_op", field="ops")


class OpStatus(StrEnum):
    APPLIED = "applied"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class OpResult:
    """The cloud's final word on one op; a refusal is a business result."""

    op_id: str
    status: OpStatus
    code: str | None
    points: int

    def __post_init__(self) -> None:
        # The cloud builds one per op: the checks below call out only when they have work to do.
        if type(self.status) is not OpStatus and isinstance(self.status, str):
            try:
                object.__setattr__(self, "status", OpStatus(self.status))
            except ValueError as exc:
                raise LocalProtocolError("unknown op status", code="bad_shape", field="status") from exc
        check_types(self)
        if match_uuid(self.op_id) is None:
            _check_uuid("op_id", self.op_id)
        if self.code is not None:
            check_text("code", self.code, 64)
        if not -MAX_POINTS <= self.points <= MAX_POINTS:
            check_range("points", self.points, -MAX_POINTS, MAX_POINTS)

    def to_wire(self) -> dict[str, Any]:
        """What the generic ``validate.to_wire`` makes of it (status stays the str enum), without its probing."""
        return {"op_id": self.op_id, "status": self.status, "code": self.code, "points": self.points}


@dataclass(frozen=True, slots=True)
class Balance:
    """A customer's confirmed balance at a cloud change version."""

    customer_id: str
    points: int
    version: int

    def __post_init__(self) -> None:
        check_types(self)
        if match_uuid(self.customer_id) is None:
            _check_uuid("customer_id", self.customer_id)
        if not (-(2**62) <= self.points <= 2**62 and 0 <= self.version <= 2**62):
            check_range("points", self.points, -(2**62), 2**62)
            check_range("version", self.version, 0, 2**62)

    def to_wire(self) -> dict[str, Any]:
        """What the generic ``validate.to_wire`` makes of it, without its probing."""
        return {"customer_id": self.customer_id, "points": self.points, "version": self.version}


@dataclass(frozen=True, slots=True)
class Ack:
    store_id: str
    seq: int
    batch_hash: bytes
    at: int
    results: tuple[OpResult, ...]
    balances: tuple[Balance, ...]

    def __post_init__(self) -> None:
        check_types(self)
        check_slug("store_id", self.store_id)
        check_range("seq", self.seq, 1, 2**62)
        _check_bytes("batch_hash", self.batch_hash, HASH_LEN)
        _check_time("at", self.at)
        if len(self.results) > MAX_BATCH_OPS or len(self.balances) > MAX_BATCH_OPS:
            raise LocalProtocolError("too many results", code="out_of_range", field="results")

    def to_wire(self) -> dict[str, Any]:
        """The generic ``validate.to_wire`` map, calling the results' and balances' own to_wire directly."""
        return {"store_id": self.store_id, "seq": self.seq, "batch_hash": self.batch_hash, "at": self.at,
                "results": [result.to_wire() for result in self.results],
                "balances": [balance.to_wire() for balance in self.balances]}


@dataclass(frozen=True, slots=True)
class Pull:
    store_id: str
    key_id: str
    cursor: int
    nonce: bytes
    at: int
    limit: int
    #: The newest cloud key this edge trusts: the downlink announces the ones after it.
    cloud_key_id: str

    def __post_init__(self) -> None:
        check_types(self)
        check_slug("store_id", self.store_id)
        check_text("key_id", self.key_id, 64, required=True)
        check_text("cloud_key_id", self.cloud_key_id, 64, required=True)
        check_range("cursor", self.cursor, 0, 2**62)
        _check_bytes("nonce", self.nonce, NONCE_LEN)
        _check_time("at", self.at)
        check_range("limit", self.limit, 1, MAX_DOWNLINK_CUSTOMERS)


@dataclass(frozen=True, slots=True)
class CustomerRecord:
    """A customer as the cloud knows it, with the confirmed balance.

    ``expiring`` is (expires_at, points) of the balance's upcoming expiries,
    nearest first (see ``protocol.expiry.upcoming``). ``merged_into`` names the
    profile this one was merged into (a duplicate card code or phone): the
    record is then a tombstone, and the edge folds it into that survivor.
    """

    customer_id: str
    name: str
    phone: str | None
    email: str | None
    card_code: str | None
    balance: int
    version: int
    groups: tuple[str, ...] = ()
    opted_out: bool = False
    expiring: tuple[tuple[int, int], ...] = ()
    merged_into: str | None = None
    #: The processor's card token linked to the profile (``protocol.claims``), if any. On the
    #: wire only when set, so a record without a card encodes as it did before cards.
    card_token: str | None = None
    #: The cloud erased this customer's personal data: the edge scrubs its copies (see
    #: ``protocol.privacy``). Sent only when true, so records stay readable by older edges.
    erased: bool = False

    def __post_init__(self) -> None:
        check_types(self)
        _check_uuid("customer_id", self.customer_id)
        check_text("card_token", self.card_token, 128)
        if self.card_token is not None and looks_like_card_number(self.card_token):
            raise LocalProtocolError("a card number is never sent, only the processor's token",
                                     code="card_number_refused", field="card_token")
        if self.erased and (self.name or self.phone or self.email or self.card_code):
            raise LocalProtocolError("an erased customer carries no personal data", code="invalid_value",
                                     field="erased")
        if self.merged_into is not None:
            _check_uuid("merged_into", self.merged_into)
            if self.merged_into == self.customer_id:
                raise LocalProtocolError("a profile cannot be merged into itself", code="invalid_value",
                                         field="merged_into")
        check_text("name", self.name, 200)
        check_text("phone", self.phone, 32)
        check_text("email", self.email, 254)
        check_text("card_code", self.card_code, 64)
        check_range("balance", self.balance, -(2**62), 2**62)
        check_range("version", self.version, 1, 2**62)
        check_groups("groups", self.groups)
        if len(self.expiring) > MAX_EXPIRING:
            raise LocalProtocolError(f"at most {MAX_EXPIRING} expiries", code="out_of_range", field="expiring")
        for at, points in self.expiring:
            _check_time("expiring", at)
            check_range("expiring", points, 1, MAX_POINTS)

    def to_wire(self) -> dict[str, Any]:
        out = {name: to_wire(getattr(self, name)) for name in _RECORD_FIELDS}
        if self.card_token is not None:
            out["card_token"] = self.card_token
        if self.erased:
            out["erased"] = True
        return out


_RECORD_FIELDS = ("customer_id", "name", "phone", "email", "card_code", "balance", "version", "groups",
                  "opted_out", "expiring", "merged_into")


def _customer_record(obj: object) -> CustomerRecord:
    """A downlink record; ``card_token`` and ``erased`` travel only when set."""
    if isinstance(obj, dict) and ("erased" not in obj or "card_token" not in obj):
        obj = {"card_token": None, "erased": False, **obj}
    return _nested(CustomerRecord, obj, "customers")


@dataclass(frozen=True, slots=True)
class Downlink:
    store_id: str
    nonce: bytes
    from_cursor: int
    to_cursor: int
    more: bool
    at: int
    customers: tuple[CustomerRecord, ...]
    program: Program | None
    #: Signed CLOUD_KEY envelopes after the pull's ``cloud_key_id``, oldest first (key_messages).
    cloud_keys: tuple[bytes, ...]

    def __post_init__(self) -> None:
        check_types(self)
        check_slug("store_id", self.store_id)
        _check_bytes("nonce", self.nonce, NONCE_LEN)
        check_range("from_cursor", self.from_cursor, 0, 2**62)
        check_range("to_cursor", self.to_cursor, self.from_cursor, 2**62)
        _check_time("at", self.at)
        if len(self.customers) > MAX_DOWNLINK_CUSTOMERS:
            raise LocalProtocolError("too many customers", code="out_of_range", field="customers")
        check_envelopes("cloud_keys", self.cloud_keys, MessageType.CLOUD_KEY, MAX_CLOUD_KEYS)


# ---------------------------------------------------------------- codecs


def _pack(obj: Any) -> bytes:
    packed: bytes = msgpack.packb({"v": BODY_VERSION, **to_wire(obj)}, use_bin_type=True)
    return packed


def _build(cls: Callable[..., T], kwargs: dict[str, Any]) -> T:
    try:
        return cls(**kwargs)
    except LocalProtocolError as exc:
        raise RemoteProtocolError(exc.message, code=exc.code, field=exc.field) from exc


def _body_fields(cls: type, body: bytes, type_: MessageType) -> dict[str, Any]:
    obj = safe_unpackb(body, max_len=MAX_ENVELOPE_BYTES[type_], what=f"{type_.value} body")
    if not isinstance(obj, dict) or obj.get("v") != BODY_VERSION or isinstance(obj.get("v"), bool):
        raise RemoteProtocolError(
            f"{type_.value} body must be a map with v={BODY_VERSION}", code="bad_version"
        )
    obj = {k: v for k, v in obj.items() if k != "v"}
    try:
        return fields_of(cls, obj, type_.value)
    except LocalProtocolError as exc:
        raise RemoteProtocolError(exc.message, code=exc.code, field=exc.field) from exc


def _items(value: object, what: str) -> tuple[Any, ...]:
    if not isinstance(value, tuple):
        raise RemoteProtocolError(f"{what} must be an array", code="bad_shape", field=what)
    return value


def _nested(cls: Callable[..., T], obj: object, what: str) -> T:
    try:
        return cls(**fields_of(cls, obj, what))  # type: ignore[arg-type]
    except LocalProtocolError as exc:
        raise RemoteProtocolError(exc.message, code=exc.code, field=exc.field) from exc


def encode_batch(batch: Batch) -> bytes:
    return _pack(batch)


def decode_batch(body: bytes) -> Batch:
    kw = _body_fields(Batch, body, MessageType.BATCH)
    kw["ops"] = tuple(op_from_wire(o) for o in _items(kw["ops"], "ops"))
    return _build(Batch, kw)


def encode_ack(ack: Ack) -> bytes:
    return _pack(ack)


def decode_ack(body: bytes) -> Ack:
    kw = _body_fields(Ack, body, MessageType.ACK)
    kw["results"] = tuple(_nested(OpResult, r, "results") for r in _items(kw["results"], "results"))
    kw["balances"] = tuple(_nested(Balance, b, "balances") for b in _items(kw["balances"], "balances"))
    return _build(Ack, kw)


def encode_pull(pull: Pull) -> bytes:
    return _pack(pull)


def decode_pull(body: bytes) -> Pull:
    return _build(Pull, _body_fields(Pull, body, MessageType.PULL))


def encode_downlink(downlink: Downlink) -> bytes:
    return _pack(downlink)


def decode_downlink(body: bytes) -> Downlink:
    kw = _body_fields(Downlink, body, MessageType.DOWNLINK)
    kw["customers"] = tuple(_customer_record(c) for c in _items(kw["customers"], "customers"))
    if kw["program"] is not None:
        kw["program"] = _nested(Program, kw["program"], "program")
    return _build(Downlink, kw)


# ------------------------------------------------- sealed, one call each


def seal_batch(batch: Batch, key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    """The envelope bytes and the batch hash (the next batch's ``prev_hash``)."""
    body = encode_batch(batch)
    return seal(MessageType.BATCH, body, key, batch.key_id), body_hash(body)


def open_ack(data: bytes, cloud_key: Ed25519PublicKey) -> Ack:
    return decode_ack(open_envelope(data, MessageType.ACK).verify(cloud_key))


def open_downlink(data: bytes, cloud_key: Ed25519PublicKey) -> Downlink:
    return decode_downlink(open_envelope(data, MessageType.DOWNLINK).verify(cloud_key))
