"""Property tests: whatever bytes or structures a peer sends, the protocol layer
returns a valid value or raises ProtocolError, and never anything else.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import (
    Ack,
    Balance,
    Batch,
    Consent,
    CustomerRecord,
    Downlink,
    Earn,
    Enroll,
    MessageType,
    Op,
    OpResult,
    OpStatus,
    Program,
    ProtocolError,
    Pull,
    Redeem,
    Refund,
    UpdateProfile,
    Void,
    body_hash,
    decode_ack,
    decode_batch,
    decode_downlink,
    decode_pull,
    encode_ack,
    encode_batch,
    encode_downlink,
    encode_pull,
    key_id_for,
    op_from_wire,
    open_envelope,
    private_key_from_seed,
    public_bytes,
    seal_batch,
)
from protocol.envelope import Envelope
from protocol.key_messages import (
    Claim,
    CloudKeyAnnouncement,
    Enrollment,
    StoreKeyRotated,
    StoreKeyRotation,
    decode_claim,
    decode_cloud_key,
    decode_enrollment,
    decode_key_chain,
    decode_store_key_rotated,
    decode_store_key_rotation,
    encode_claim,
    encode_cloud_key,
    encode_enrollment,
    encode_store_key_rotated,
    encode_store_key_rotation,
    open_claim,
    open_cloud_key,
    open_enrollment,
    seal_cloud_key,
    seal_store_key_rotation,
)
from protocol.sale import Sale, SaleLine, SaleState, Tender, TenderKind

T0 = 1_767_225_600_000
KEY = private_key_from_seed(bytes(range(32)))
KEY_ID = key_id_for(KEY.public_key())
CUSTOMER = "11111111-2222-4333-8444-555555555555"
COMMON: dict[str, Any] = {"terminal_id": "01234567-89ab-4cde-8f01-23456789abcd", "customer_id": CUSTOMER}
OP_IDS = [f"019b76da-a80{i}-7000-8000-00000000000{i}" for i in range(7)]
SALE = Sale("S-3", (SaleLine("1", "latte", "drink", 2, 450, 50, 60), SaleLine("2", "mug", None, 1, 900, 0, 0)), 100,
            (Tender(TenderKind.LOYALTY, 200), Tender(TenderKind.CARD, 1_610, "tok_9")), SaleState.CLOSED)
BATCH = Batch(
    store_id="store-1",
    node_id="0f0e0d0c-0b0a-4908-8706-050403020100",
    key_id=KEY_ID,
    seq=3,
    prev_hash=bytes(range(32)),
    at=T0 + 9,
    ops=(
        Enroll(
            op_id=OP_IDS[0], at=T0, **COMMON, name="Ana", phone="+351912345678", email="a@b.pt", card_code=None,
            consent=Consent(terms_accepted=True, channels=("phone", "email"), source="pos", staff="Rui", at=T0),
        ),
        UpdateProfile(
            op_id=OP_IDS[1], at=T0, **COMMON, name=None, phone=None, email=None, card_code="C-1", clear=("email",)
        ),
        Earn(op_id=OP_IDS[2], at=T0, **COMMON, sale_id="S-1", amount=1250, points=12, program_version=1),
        Redeem(op_id=OP_IDS[3], at=T0, **COMMON, sale_id="S-2", points=10, program_version=1,
               rewards=(("coffee", 2),)),
        Earn(op_id=OP_IDS[4], at=T0, **COMMON, sale_id="S-3", amount=SALE.total, points=16, program_version=1,
             sale=SALE),
        Refund(op_id=OP_IDS[5], at=T0, **COMMON, sale_id="S-3", lines=(("1", 1),), reversed_points=4,
               returned_points=1, program_version=1),
        Void(op_id=OP_IDS[6], at=T0, **COMMON, sale_id="S-3", reversed_points=12, returned_points=0,
             program_version=1),
    ),
)
ACK = Ack(
    store_id="store-1",
    seq=3,
    batch_hash=body_hash(encode_batch(BATCH)),
    at=T0 + 10,
    results=(OpResult(OP_IDS[2], OpStatus.APPLIED, None, 12), OpResult(OP_IDS[3], OpStatus.REFUSED, "nope", 0)),
    balances=(Balance(CUSTOMER, 12, 7),),
)
PULL = Pull(store_id="store-1", key_id=KEY_ID, cursor=6, nonce=bytes(16), at=T0, limit=500, cloud_key_id=KEY_ID)
NEW_KEY = private_key_from_seed(bytes(range(32, 64)))
CLOUD_KEY_ENVELOPE = seal_cloud_key(2, KEY, NEW_KEY, 3_600_000, T0)
STORE_KEY_ENVELOPE = seal_store_key_rotation("store-1", KEY, NEW_KEY, bytes(16), T0)
DOWNLINK = Downlink(
    store_id="store-1",
    nonce=bytes(16),
    from_cursor=6,
    to_cursor=7,
    more=True,
    at=T0,
    customers=(CustomerRecord(CUSTOMER, "Ana", None, "a@b.pt", "C-1", 12, 7, ("staff", "vip"), True,
                              ((T0 + 1, 5), (T0 + 86_400_001, 7))),),
    program=Program("brand-1", 1, "Points", 1, 100),
    cloud_keys=(CLOUD_KEY_ENVELOPE,),
)
CLAIM = Claim("lck_token", KEY_ID, public_bytes(KEY.public_key()), bytes(16), T0)
ENROLLMENT = Enrollment("store-1", "brand-1", KEY_ID, bytes(16), T0, 3, KEY_ID, public_bytes(KEY.public_key()))
ROTATED = StoreKeyRotated("store-1", KEY_ID, key_id_for(NEW_KEY.public_key()), T0 + 1, bytes(16), T0)
GOLDEN_BATCH = seal_batch(BATCH, KEY)[0]

# sized so that the whole file runs in well under 20 s on a shared 2-core machine
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
THOROUGH = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DECODERS: dict[MessageType, tuple[Callable[[bytes], Any], Callable[[Any], bytes], type]] = {
    MessageType.BATCH: (decode_batch, encode_batch, Batch),
    MessageType.ACK: (decode_ack, encode_ack, Ack),
    MessageType.PULL: (decode_pull, encode_pull, Pull),
    MessageType.DOWNLINK: (decode_downlink, encode_downlink, Downlink),
    MessageType.CLAIM: (decode_claim, encode_claim, Claim),
    MessageType.ENROLLMENT: (decode_enrollment, encode_enrollment, Enrollment),
    MessageType.STORE_KEY: (decode_store_key_rotation, encode_store_key_rotation, StoreKeyRotation),
    MessageType.STORE_KEY_ACK: (decode_store_key_rotated, encode_store_key_rotated, StoreKeyRotated),
    MessageType.CLOUD_KEY: (decode_cloud_key, encode_cloud_key, CloudKeyAnnouncement),
}
VALID_BODIES = {
    MessageType.BATCH: encode_batch(BATCH),
    MessageType.ACK: encode_ack(ACK),
    MessageType.PULL: encode_pull(PULL),
    MessageType.DOWNLINK: encode_downlink(DOWNLINK),
    MessageType.CLAIM: encode_claim(CLAIM),
    MessageType.ENROLLMENT: encode_enrollment(ENROLLMENT),
    MessageType.STORE_KEY: open_envelope(STORE_KEY_ENVELOPE, MessageType.STORE_KEY).body,
    MessageType.STORE_KEY_ACK: encode_store_key_rotated(ROTATED),
    MessageType.CLOUD_KEY: open_envelope(CLOUD_KEY_ENVELOPE, MessageType.CLOUD_KEY).body,
}
SELF_CHECKING_OPENERS: dict[MessageType, Callable[[bytes], Any]] = {
    MessageType.CLAIM: open_claim,
    MessageType.ENROLLMENT: open_enrollment,
    MessageType.CLOUD_KEY: lambda data: open_cloud_key(data, KEY.public_key()),
}

# ----------------------------------------------------------- strategies

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
map_keys = st.text(max_size=8) | st.binary(max_size=8) | st.integers(-5, 5)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(map_keys, children, max_size=4),
    max_leaves=20,
)
# msgpack itself refuses non-str/bytes keys on decode (strict_map_key)
wire_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.binary(max_size=8), children, max_size=4),
    max_leaves=20,
)
message_types = st.sampled_from(list(MessageType))


def packed(obj: object) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def value_or_protocol_error(fn: Callable[..., Any], *args: Any) -> Any:
    """The invariant: a value, or ProtocolError; any other exception fails the test."""
    try:
        return fn(*args)
    except ProtocolError as exc:
        assert isinstance(exc.message, str) and exc.message
        assert 400 <= exc.status_hint < 500
        return None


def check_decoded(type_: MessageType, body: bytes) -> None:
    decode, encode, cls = DECODERS[type_]
    result = value_or_protocol_error(decode, body)
    if result is not None:
        # whatever decodes is a valid value that survives its own round trip
        assert isinstance(result, cls)
        assert decode(encode(result)) == result


def field_maps(type_: MessageType) -> st.SearchStrategy[dict[str, Any]]:
    """Body maps with the right keys and arbitrary values: past the shape check."""
    names = list(msgpack.unpackb(VALID_BODIES[type_], raw=False))
    return st.fixed_dictionaries({name: values for name in names}).map(lambda d: {**d, "v": 1})


def op_maps() -> st.SearchStrategy[dict[str, Any]]:
    valid = [op.to_wire() for op in BATCH.ops]
    return st.sampled_from(valid).flatmap(
        lambda wire: st.fixed_dictionaries(
            {name: (st.just(value) | values) for name, value in wire.items()}
        )
    )


# -------------------------------------------------------------- envelopes


@FAST
@given(message_types, st.binary(max_size=300))
def test_open_envelope_on_arbitrary_bytes(type_: MessageType, data: bytes) -> None:
    result = value_or_protocol_error(open_envelope, data, type_)
    assert result is None or isinstance(result, Envelope)


@FAST
@given(message_types, wire_values)
def test_open_envelope_on_arbitrary_msgpack(type_: MessageType, obj: object) -> None:
    result = value_or_protocol_error(open_envelope, packed(obj), type_)
    assert result is None or isinstance(result, Envelope)


@FAST
@given(
    message_types,
    st.tuples(
        values | st.just(1), values | st.sampled_from([t.value for t in MessageType]),
        values | st.just(KEY_ID), values | st.binary(max_size=40), values | st.binary(min_size=64, max_size=64),
    ),
)
def test_open_envelope_on_envelope_shaped_arrays(type_: MessageType, parts: tuple[Any, ...]) -> None:
    result = value_or_protocol_error(open_envelope, packed(list(parts)), type_)
    if result is not None:
        assert isinstance(result, Envelope) and result.type is type_
        assert isinstance(result.body, bytes) and len(result.signature) == 64


@FAST
@given(st.binary(max_size=100))
def test_open_envelope_refuses_non_bytes(data: bytes) -> None:
    for wrapped in (bytearray(data), memoryview(data), data.hex()):
        assert value_or_protocol_error(open_envelope, wrapped, MessageType.BATCH) is None


# ------------------------------------------------------------------ bodies


@THOROUGH
@given(message_types, st.binary(max_size=300))
def test_decode_arbitrary_bytes(type_: MessageType, body: bytes) -> None:
    check_decoded(type_, body)


@FAST
@given(message_types, wire_values)
def test_decode_arbitrary_msgpack(type_: MessageType, obj: object) -> None:
    check_decoded(type_, packed(obj))


@FAST
@given(st.data())
def test_decode_maps_with_the_right_keys_and_arbitrary_values(data: st.DataObject) -> None:
    type_ = data.draw(message_types)
    check_decoded(type_, packed(data.draw(field_maps(type_))))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op_maps(), min_size=1, max_size=3))
def test_decode_batch_with_arbitrary_op_values(ops: list[dict[str, Any]]) -> None:
    body = msgpack.unpackb(VALID_BODIES[MessageType.BATCH], raw=False)
    body["ops"] = ops
    check_decoded(MessageType.BATCH, packed(body))


# ---------------------------------------------------------------------- ops


@FAST
@given(values)
def test_op_from_wire_on_arbitrary_structures(obj: object) -> None:
    result = value_or_protocol_error(op_from_wire, obj)
    assert result is None or isinstance(result, Op)


@FAST
@given(op_maps())
def test_op_from_wire_on_op_shaped_maps(obj: dict[str, Any]) -> None:
    result = value_or_protocol_error(op_from_wire, obj)
    if result is not None:
        assert isinstance(result, Op)
        assert op_from_wire(result.to_wire()) == result


@FAST
@given(st.sampled_from(BATCH.ops), st.dictionaries(map_keys, values, min_size=1, max_size=3), st.data())
def test_op_from_wire_with_extra_keys_of_any_type(op: Op, extra: dict[Any, Any], data: st.DataObject) -> None:
    wire: dict[Any, Any] = op.to_wire()
    if data.draw(st.booleans(), label="drop one"):
        del wire[data.draw(st.sampled_from(sorted(wire)), label="dropped")]
    wire.update(extra)
    result = value_or_protocol_error(op_from_wire, wire)
    assert result is None or (set(extra) <= set(wire) and op_from_wire(result.to_wire()) == result)


# --------------------------------------------- mutations of a valid batch


@THOROUGH
@given(st.data())
def test_byte_mutations_of_a_valid_batch_body(data: st.DataObject) -> None:
    body = bytearray(VALID_BODIES[MessageType.BATCH])
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        index = data.draw(st.integers(0, len(body)), label="index")
        if kind == "flip" and index < len(body):
            body[index] ^= data.draw(st.integers(1, 255), label="mask")
        elif kind == "truncate":
            del body[index:]
        elif kind == "insert":
            body[index:index] = data.draw(st.binary(min_size=1, max_size=8), label="inserted")
        elif kind == "delete":
            del body[index : index + data.draw(st.integers(1, 8))]
    check_decoded(MessageType.BATCH, bytes(body))


def map_paths(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every map inside a decoded structure (lists are indexed)."""
    found: list[tuple[Any, ...]] = []
    if isinstance(obj, dict):
        found.append(path)
        for key, value in obj.items():
            found.extend(map_paths(value, (*path, key)))
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            found.extend(map_paths(value, (*path, index)))
    return found


def at_path(obj: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        obj = obj[step]
    return obj


@THOROUGH
@given(st.data())
def test_structural_mutations_of_valid_bodies(data: st.DataObject) -> None:
    type_ = data.draw(message_types)
    original = msgpack.unpackb(VALID_BODIES[type_], raw=False)
    mutated = copy.deepcopy(original)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        paths = map_paths(mutated)
        if not paths:
            break
        target = at_path(mutated, data.draw(st.sampled_from(paths), label="path"))
        kind = data.draw(st.sampled_from(["drop", "add", "retype"]))
        keys = sorted(target, key=repr)
        if kind == "drop" and keys:
            del target[data.draw(st.sampled_from(keys), label="dropped")]
        elif kind == "add":
            target[data.draw(st.text(max_size=10) | st.binary(max_size=4), label="key")] = data.draw(values)
        elif kind == "retype" and keys:
            target[data.draw(st.sampled_from(keys), label="retyped")] = data.draw(values, label="value")
    check_decoded(type_, packed(mutated))


@FAST
@given(st.data())
def test_mutated_envelopes_of_a_valid_batch(data: st.DataObject) -> None:
    envelope = bytearray(GOLDEN_BATCH)
    index = data.draw(st.integers(0, len(envelope) - 1))
    envelope[index] ^= data.draw(st.integers(1, 255))
    result = value_or_protocol_error(open_envelope, bytes(envelope), MessageType.BATCH)
    original = open_envelope(GOLDEN_BATCH, MessageType.BATCH)
    if result is not None and (result.body, result.signature) != (original.body, original.signature):
        # a change to the signed part that still parses must not verify (the
        # key id is not signed: changing it only picks another key to verify with)
        assert value_or_protocol_error(result.verify, KEY.public_key()) is None


# ------------------------------------------------------------------ keys


@FAST
@given(st.sampled_from(list(SELF_CHECKING_OPENERS)), st.binary(max_size=600))
def test_self_checking_openers_on_arbitrary_bytes(type_: MessageType, data: bytes) -> None:
    value_or_protocol_error(SELF_CHECKING_OPENERS[type_], data)


@FAST
@given(st.data())
def test_mutated_key_envelopes(data: st.DataObject) -> None:
    """A flipped byte anywhere in a claim or an announcement: refused, or the very same message."""
    type_, golden = data.draw(st.sampled_from([
        (MessageType.CLAIM, seal_claim_for_fuzz()), (MessageType.CLOUD_KEY, CLOUD_KEY_ENVELOPE)]))
    envelope = bytearray(golden)
    index = data.draw(st.integers(0, len(envelope) - 1))
    envelope[index] ^= data.draw(st.integers(1, 255))
    opened = value_or_protocol_error(SELF_CHECKING_OPENERS[type_], bytes(envelope))
    if opened is not None:
        assert opened == SELF_CHECKING_OPENERS[type_](golden)


def seal_claim_for_fuzz() -> bytes:
    from protocol import seal

    return seal(MessageType.CLAIM, encode_claim(CLAIM), KEY, KEY_ID)


@FAST
@given(wire_values | st.lists(st.binary(max_size=40), max_size=40))
def test_decode_key_chain_on_arbitrary_structures(obj: object) -> None:
    result = value_or_protocol_error(decode_key_chain, packed(obj))
    if result is not None:
        assert isinstance(result, tuple) and all(isinstance(e, bytes) for e in result)


@FAST
@given(st.binary(max_size=200))
def test_decode_key_chain_on_arbitrary_bytes(data: bytes) -> None:
    value_or_protocol_error(decode_key_chain, data)
