"""Signed sign-up links for the self-enrollment portal (pure functions).

A link printed on a receipt or a flyer names the brand (and optionally the
store) and carries a token signed with an Ed25519 key the cloud knows: the
cloud key (``loyalty-cloud portal link``) or a store's own key, so an edge can
print links on receipts while offline. The token holds its issue time; a
receipt link is good for ``RECEIPT_LINK_MS`` (7 days), a flyer link has no
end. The signature covers a domain prefix, so no other signed message of the
system can pass for a link.

    token = base64url(payload) "." base64url(signature)
    payload = "1|<brand>|<store or empty>|<issued_at ms>|<r or f>|<key id hex>"
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import quote, urlencode

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .envelope import key_id_for
from .errors import LocalProtocolError, RemoteProtocolError
from .messages import check_slug
from .ops import MAX_TIME_MS, MIN_TIME_MS

LINK_DOMAIN = b"loyalty-edge/signup-link/v1\x00"
RECEIPT_LINK_MS = 7 * 24 * 3600 * 1000
#: A token issued this far in the future is refused (clocks disagree a little, not a day).
MAX_FUTURE_MS = 10 * 60 * 1000
MAX_TOKEN_CHARS = 400
_KEY_PREFIX = "ed25519:"
_HEX16 = re.compile(r"^[0-9a-f]{16}$")


class LinkKind(StrEnum):
    RECEIPT = "r"
    FLYER = "f"


@dataclass(frozen=True, slots=True)
class SignupLink:
    brand_id: str
    store_id: str | None
    issued_at: int
    kind: LinkKind
    key_id: str

    def expires_at(self) -> int | None:
        return self.issued_at + RECEIPT_LINK_MS if self.kind is LinkKind.RECEIPT else None


@dataclass(frozen=True, slots=True)
class SignedToken:
    """A parsed, not yet verified token: the claims and the exact signed bytes."""

    link: SignupLink
    payload: bytes
    signature: bytes

    def verify(self, public_key: Ed25519PublicKey) -> SignupLink:
        """The link if ``public_key`` (the one ``link.key_id`` names) signed it."""
        if key_id_for(public_key) != self.link.key_id:
            raise RemoteProtocolError("the link is signed by another key", status_hint=401,
                                      code="bad_signature", field="t")
        try:
            public_key.verify(self.signature, LINK_DOMAIN + self.payload)
        except InvalidSignature as exc:
            raise RemoteProtocolError("the link's signature does not hold", status_hint=401,
                                      code="bad_signature", field="t") from exc
        return self.link


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_token(brand_id: str, store_id: str | None, issued_at: int, kind: LinkKind,
               private_key: Ed25519PrivateKey) -> str:
    """A signed token for a sign-up link; ``issued_at`` is the caller's clock in ms."""
    check_slug("brand_id", brand_id)
    if store_id is not None:
        check_slug("store_id", store_id)
    if not MIN_TIME_MS <= issued_at <= MAX_TIME_MS:
        raise LocalProtocolError("issued_at is not a plausible time", code="out_of_range", field="issued_at")
    key_hex = key_id_for(private_key.public_key()).removeprefix(_KEY_PREFIX)
    payload = f"1|{brand_id}|{store_id or ''}|{issued_at}|{LinkKind(kind).value}|{key_hex}".encode()
    return f"{_b64(payload)}.{_b64(private_key.sign(LINK_DOMAIN + payload))}"


def signup_url(base_url: str, brand_id: str, token: str, store_id: str | None = None) -> str:
    """The URL to print (as text or in a QR code): ``BASE/portal/BRAND?t=TOKEN``."""
    query = {"t": token} if store_id is None else {"store": store_id, "t": token}
    return f"{base_url.rstrip('/')}/portal/{quote(brand_id, safe='')}?{urlencode(query)}"


def receipt_link(base_url: str, brand_id: str, store_id: str | None, issued_at: int,
                 private_key: Ed25519PrivateKey) -> str:
    """What an edge prints on a receipt: a sign-up URL good for 7 days from ``issued_at``."""
    token = make_token(brand_id, store_id, issued_at, LinkKind.RECEIPT, private_key)
    return signup_url(base_url, brand_id, token, store_id)


def _bad(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, code="bad_link", field="t")


def parse_token(token: str) -> SignedToken:
    """The claims of a token, checked for shape only (verify the signature next)."""
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS:
        raise _bad("the link token is missing or too long")
    head, dot, tail = token.partition(".")
    try:
        payload, signature = _unb64(head), _unb64(tail)
        text = payload.decode("ascii")
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise _bad("the link token is not valid base64url") from exc
    parts = text.split("|")
    if not dot or len(signature) != 64 or len(parts) != 6 or parts[0] != "1":
        raise _bad("the link token has the wrong shape")
    _, brand_id, store_id, issued, kind, key_hex = parts
    try:
        check_slug("brand_id", brand_id)
        if store_id:
            check_slug("store_id", store_id)
    except LocalProtocolError as exc:
        raise _bad(f"the link token names a bad {exc.field}") from exc
    if not issued.isdigit() or not MIN_TIME_MS <= int(issued) <= MAX_TIME_MS:
        raise _bad("the link token's issue time is not a time")
    if kind not in {k.value for k in LinkKind} or not _HEX16.fullmatch(key_hex):
        raise _bad("the link token has the wrong shape")
    link = SignupLink(brand_id, store_id or None, int(issued), LinkKind(kind), _KEY_PREFIX + key_hex)
    return SignedToken(link, payload, signature)


def check_fresh(link: SignupLink, now: int) -> None:
    """Refuse a receipt link older than 7 days, or any link issued in the future."""
    if link.issued_at > now + MAX_FUTURE_MS:
        raise RemoteProtocolError("the link was issued in the future", code="link_from_future", field="t")
    expires = link.expires_at()
    if expires is not None and now >= expires:
        raise RemoteProtocolError("the link has expired: receipt links last 7 days", status_hint=410,
                                  code="link_expired", field="t")
