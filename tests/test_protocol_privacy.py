"""What erasure scrubs, on the wire forms (pure): ops, sales, stored batches and envelopes, and
the downlink's ``erased`` flag, which older edges never see unless it is set."""

from __future__ import annotations

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import (
    GENESIS_HASH,
    Batch,
    CustomerRecord,
    Downlink,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    body_hash,
    decode_batch,
    decode_downlink,
    encode_downlink,
    key_id_for,
    op_from_wire,
    seal_batch,
)
from protocol.earning import Customer as RulesCustomer
from protocol.privacy import (
    ERASED_REASON,
    redact_batch_body,
    redact_envelope,
    redacted_prev_hash,
    scrub_basis,
    scrub_op,
)
from protocol.refunds import EarnBasis

from . import cloudkit as k
from .test_cloud_erasure import card_earn

CID = k.any_uuid()


def test_scrubbed_ops_keep_amounts_and_lose_the_person() -> None:
    enroll = k.enroll(CID, name="Nadia Vex", phone="+33600000001").to_wire()
    assert scrub_op(enroll) == {**enroll, "name": "", "phone": None, "email": None, "card_code": None}
    update = k.update(CID, name="N. Vex", email="n@vex.example", groups=("staff",)).to_wire()
    clean = scrub_op(update)
    assert (clean["name"], clean["email"], clean["groups"]) == (None, None, ["staff"])
    op_from_wire(clean)  # still a valid op: the groups change stands
    with pytest.raises(ProtocolError):
        op_from_wire(scrub_op(k.update(CID, phone="+33600000002").to_wire()))  # nothing left to say
    earn = card_earn(CID, "s-1", "tok_secret").to_wire()
    clean = scrub_op(earn)
    assert clean["sale"]["tenders"][0] == {"kind": "card", "amount": 1000, "card_token": None}
    assert clean["points"] == earn["points"] and clean["sale"]["lines"] == earn["sale"]["lines"]
    assert scrub_op(k.adjust(CID, 5).to_wire())["reason"] == ERASED_REASON
    redeem = k.redeem(CID, "s-1", 3).to_wire()
    assert scrub_op(redeem) == redeem


def test_a_scrubbed_basis_still_rates_the_sale() -> None:
    op = card_earn(CID, "s-2", "tok_secret")
    basis = EarnBasis.of(op, RulesCustomer())
    assert basis is not None
    clean = EarnBasis.from_bytes(scrub_basis(basis.to_bytes()))
    assert clean.sale.tenders[0].card_token is None and clean.sale.lines == basis.sale.lines
    assert b"tok_secret" not in scrub_basis(basis.to_bytes())


def test_a_redacted_batch_keeps_its_link_and_says_so() -> None:
    key = Ed25519PrivateKey.generate()
    other = k.any_uuid()
    batch = Batch(store_id="store-a", node_id=k.any_uuid(), key_id=key_id_for(key.public_key()), seq=1,
                  prev_hash=GENESIS_HASH, at=k.now_ms(),
                  ops=(k.enroll(CID, name="Nadia Vex"), k.enroll(other, name="Olaf Keep")))
    envelope, digest = seal_batch(batch, key)
    body = msgpack.unpackb(envelope, raw=False)[3]
    assert body_hash(body) == digest and redacted_prev_hash(body) is None
    assert redact_batch_body(body, {k.any_uuid()}) is None  # nobody of theirs: kept as it is
    clean = redact_batch_body(body, {CID})
    assert clean is not None and b"Nadia Vex" not in clean and b"Olaf Keep" in clean
    assert redacted_prev_hash(clean) == GENESIS_HASH
    with pytest.raises(RemoteProtocolError):
        decode_batch(clean)  # never read as a batch again
    sealed = redact_envelope(envelope, {CID})
    assert sealed is not None and b"Nadia Vex" not in sealed and b"Olaf Keep" in sealed


def test_the_erased_flag_travels_only_when_set() -> None:
    plain = CustomerRecord(CID, "Ana", "+33600000003", None, None, 5, 2)
    erased = CustomerRecord(CID, "", None, None, None, 5, 3, erased=True)
    assert "erased" not in plain.to_wire() and erased.to_wire()["erased"] is True
    with pytest.raises(LocalProtocolError):
        CustomerRecord(CID, "Ana", None, None, None, 5, 3, erased=True)
    down = Downlink("store-a", b"n" * 16, 0, 3, False, k.now_ms(), (plain, erased), None, ())
    assert decode_downlink(encode_downlink(down)).customers == (plain, erased)
