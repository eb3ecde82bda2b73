"""The pure parts of claims and card links: codes, their hash, the window setting,
the card run, and the two ops on the wire."""

from __future__ import annotations

import msgpack
import pytest

from protocol import NO_CUSTOMER, Claim, LocalProtocolError, ProtocolError, UnclaimedSale, op_from_wire, uuid7
from protocol.claims import (
    ALPHABET,
    DAY_MS,
    card_step,
    claim_url,
    code_hash,
    expires_at,
    new_code,
    normalise_code,
    sale_bytes,
    sale_of,
)
from protocol.program_settings import parse_settings
from protocol.sale import Sale, SaleLine, SaleState, Tender, TenderKind

AT = 1_780_000_000_000
TERMINAL = "0b6f4c9e-1d2a-4f3b-8c7d-9e0f1a2b3c4d"


def paid(*tenders: Tender, sale_id: str = "s1") -> Sale:
    return Sale(sale_id, (SaleLine("1", "coffee", None, 1, 1000, 0, 0),), 0, tenders, SaleState.PAID)


def card(token: str | None, amount: int = 1000) -> Tender:
    return Tender(TenderKind.CARD, amount, token)


def test_codes_are_80_bits_of_a_readable_alphabet_and_typing_is_forgiving() -> None:
    codes = {new_code() for _ in range(200)}
    assert len(codes) == 200
    for code in codes:
        raw = code.replace("-", "")
        assert len(raw) == 16 and set(raw) <= set(ALPHABET) and code.count("-") == 3
    assert len(ALPHABET) ** 16 == 2**80 and not set("ILOU") & set(ALPHABET)
    code = "7KQ2-M9XD-0A1B-ZZ10"
    assert code_hash(code) == code_hash("7kq2m9xd oa1b zzio") == code_hash("7KQ2M9XD0A1BZZL0".lower())
    assert len(code_hash(code)) == 64 and code_hash(code) != code_hash("7KQ2-M9XD-0A1B-ZZ11")
    for bad in ("", "7KQ2-M9XD", "7KQ2-M9XD-0A1B-ZZ10-1", "7KQ2-M9XD-0A1B-ZZ1U"):
        with pytest.raises(LocalProtocolError) as refused:
            normalise_code(bad)
        assert (refused.value.code, refused.value.field) == ("invalid_code", "code")
    assert claim_url("https://cloud.example/", "acme", code) == "https://cloud.example/portal/acme/claim?code=" + code


def test_the_claim_window_is_a_program_setting_of_30_days_by_default() -> None:
    assert expires_at(AT, parse_settings("{}")) == AT + 30 * DAY_MS
    assert expires_at(AT, parse_settings('{"claim_window_days": 7}')) == AT + 7 * DAY_MS
    for bad in ("0", "366", "true", '"30"', "1.5"):
        with pytest.raises(LocalProtocolError) as refused:
            parse_settings(f'{{"claim_window_days": {bad}}}')
        assert refused.value.field == "settings.claim_window_days"


def test_the_card_run_links_on_the_second_payment_in_a_row_with_the_same_token() -> None:
    assert card_step(None, paid(Tender(TenderKind.CASH, 1000))) is None  # no card payment: nothing changes
    assert card_step("t1", paid(card(None))) is None  # a card without a token is no card payment with a token
    assert card_step(None, paid(card("t1"))) == ("t1", None)
    assert card_step("t1", paid(card("t1"))) == ("t1", "t1")
    assert card_step("t1", paid(card("t2"))) == ("t2", None)
    assert card_step("t1", paid(card("t1", 500), card("t2", 500))) == (None, None)  # two cards: no single one
    assert card_step("t1", paid(card("t1", 500), card("t1", 500))) == ("t1", "t1")


def test_the_claim_ops_round_trip_and_validate() -> None:
    sale = paid(card("tok_1"))
    code = new_code()
    unclaimed = UnclaimedSale(op_id=uuid7(AT), at=AT, terminal_id=TERMINAL, customer_id=NO_CUSTOMER, sale_id="s1",
                              amount=1000, program_version=3, sale=sale, claim_hash=code_hash(code),
                              expires_at=AT + DAY_MS)
    claim = Claim(op_id=uuid7(AT), at=AT, terminal_id=TERMINAL, customer_id=uuid7(AT), sale_id="s1", points=12,
                  program_version=3)
    for op in (unclaimed, claim):
        wire = msgpack.unpackb(msgpack.packb(op.to_wire(), use_bin_type=True), raw=False, use_list=False)
        assert op_from_wire(wire) == op
    assert code not in repr(unclaimed.to_wire())  # only the hash travels
    assert sale_of(sale_bytes(sale)) == sale
    base = unclaimed.to_wire()
    for change, field in (({"customer_id": TERMINAL}, "customer_id"), ({"claim_hash": "ab"}, "claim_hash"),
                          ({"amount": 999}, "amount"), ({"expires_at": AT - 1}, "expires_at")):
        with pytest.raises(ProtocolError) as refused:
            op_from_wire({**base, **change})
        assert refused.value.field == field
