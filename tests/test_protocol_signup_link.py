"""Signed sign-up links: made by the cloud or an edge key, verified by the cloud, 7 days on a receipt."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from protocol import ProtocolError, RemoteProtocolError
from protocol.signup_link import (
    RECEIPT_LINK_MS,
    LinkKind,
    check_fresh,
    make_token,
    parse_token,
    receipt_link,
    signup_url,
)

NOW = 1_790_000_000_000
KEY = Ed25519PrivateKey.generate()


def test_a_receipt_link_round_trips_and_lasts_seven_days() -> None:
    url = receipt_link("https://loyalty.example.com/", "acme", "acme-0042", NOW, KEY)
    assert url.startswith("https://loyalty.example.com/portal/acme?store=acme-0042&t=")
    token = url.split("t=", 1)[1]
    signed = parse_token(token)
    link = signed.verify(KEY.public_key())
    assert (link.brand_id, link.store_id, link.issued_at, link.kind) == ("acme", "acme-0042", NOW, LinkKind.RECEIPT)
    check_fresh(link, NOW + RECEIPT_LINK_MS - 1)
    with pytest.raises(RemoteProtocolError) as info:
        check_fresh(link, NOW + RECEIPT_LINK_MS)
    assert info.value.code == "link_expired" and info.value.status_hint == 410
    with pytest.raises(RemoteProtocolError, match="future"):
        check_fresh(link, NOW - 3_600_000)


def test_a_flyer_link_never_expires_and_may_name_no_store() -> None:
    token = make_token("acme", None, NOW, LinkKind.FLYER, KEY)
    link = parse_token(token).verify(KEY.public_key())
    assert link.store_id is None and link.expires_at() is None
    check_fresh(link, NOW + 10 * RECEIPT_LINK_MS)
    assert signup_url("http://h:1", "acme", token) == f"http://h:1/portal/acme?t={token}"


def test_tampered_or_foreign_tokens_are_refused() -> None:
    token = make_token("acme", "s1", NOW, LinkKind.RECEIPT, KEY)
    head, sig = token.split(".")
    other = Ed25519PrivateKey.generate()
    with pytest.raises(RemoteProtocolError, match="another key"):
        parse_token(token).verify(other.public_key())
    # The same claims re-signed by another key cannot pass for this key's link.
    forged = make_token("acme", "s1", NOW, LinkKind.RECEIPT, other)
    with pytest.raises(RemoteProtocolError):
        parse_token(forged.split(".")[0] + "." + sig).verify(KEY.public_key())
    # A flyer token turned into... anything else: the payload changes, the signature fails.
    import base64
    payload = base64.urlsafe_b64decode(head + "==").replace(b"|r|", b"|f|")
    changed = base64.urlsafe_b64encode(payload).rstrip(b"=").decode() + "." + sig
    with pytest.raises(RemoteProtocolError, match="signature"):
        parse_token(changed).verify(KEY.public_key())
    for bad in ("", "x", "a.b", "." * 500, head + "." + sig + "x", "Zm9v.YmFy"):
        with pytest.raises(RemoteProtocolError):
            parse_token(bad)


@given(st.text(max_size=450))
def test_any_text_is_a_token_or_a_protocol_error(text: str) -> None:
    try:
        parse_token(text)
    except ProtocolError:
        pass
