"""Claim codes for sales recorded without a profile, and card-linked profiles.

Pure functions shared by the edge and the cloud (the caller passes in the
randomness source and the time).

**Claim codes.** 16 symbols of Crockford's base32 (no I, L, O or U, so
nothing reads as another symbol), from ``secrets``: 80 bits, printed in
four groups (``7KQ2-M9XD-...``). Only ``code_hash`` (SHA-256 of the
normalised code, under a domain label) is stored or sent; typing is
forgiving (case, spaces and dashes ignored, O read as 0, I and L as 1).
A code is valid for the program's ``claim_window_days`` from the sale.

**Card links.** A sale is a *card payment with token T* when T is the only
processor token among its card tenders (a sale paid with two different
cards names no single card). A profile's card payments are the earns of
sales carrying that profile, in the order they are applied; cash and
token-less payments do not count and do not break a run. When a profile's
last two card payments carry the same token, that token is linked to the
profile: it replaces the profile's previous card, and a token belongs to
one profile at a time (the newest link wins).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from urllib.parse import quote

import msgpack

from .errors import LocalProtocolError
from .program_settings import ProgramSettings
from .sale import Sale, sale_from_wire

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH = 16  # x 5 bits = 80 bits
DAY_MS = 24 * 3600 * 1000
_READ_AS = str.maketrans({"O": "0", "I": "1", "L": "1"})


def new_code(choice: Callable[[str], str] = secrets.choice) -> str:
    """A fresh claim code, grouped for reading: ``XXXX-XXXX-XXXX-XXXX``."""
    raw = "".join(choice(ALPHABET) for _ in range(CODE_LENGTH))
    return "-".join(raw[i:i + 4] for i in range(0, CODE_LENGTH, 4))


def normalise_code(text: str) -> str:
    """The code as typed, normalised; LocalProtocolError if it cannot be a code."""
    code = text.upper().replace("-", "").replace(" ", "").translate(_READ_AS)
    if len(code) != CODE_LENGTH or not set(code) <= set(ALPHABET):
        raise LocalProtocolError(f"a claim code is {CODE_LENGTH} letters and digits", code="invalid_code",
                                 field="code")
    return code


def code_hash(text: str) -> str:
    """Hex SHA-256 of the normalised code: what edge and cloud store and look up."""
    return hashlib.sha256(b"loyalty-claim-code-v1:" + normalise_code(text).encode()).hexdigest()


def claim_url(portal_url: str, brand_id: str, code: str) -> str:
    """The QR code's payload: the portal's claim page with the code filled in."""
    return f"{portal_url.rstrip('/')}/portal/{quote(brand_id)}/claim?code={quote(code)}"


def expires_at(sale_at: int, settings: ProgramSettings) -> int:
    return sale_at + settings.claim_window_days * DAY_MS


def payment_token(sale: Sale) -> str | None:
    """The one processor token the sale's card tenders carry, or None."""
    tokens = {t.card_token for t in sale.tenders if t.card_token is not None}
    return tokens.pop() if len(tokens) == 1 else None


def is_card_payment(sale: Sale) -> bool:
    return any(t.card_token is not None for t in sale.tenders)


def card_step(last_token: str | None, sale: Sale) -> tuple[str | None, str | None] | None:
    """A profile's card state after an earn on ``sale``: None if the sale is no
    card payment (nothing changes), else (the new last token, the token to link or None)."""
    if not is_card_payment(sale):
        return None
    token = payment_token(sale)
    link = token if token is not None and token == last_token else None
    return token, link


def sale_bytes(sale: Sale) -> bytes:
    """A sale as stored with its unclaimed record (msgpack of its wire map)."""
    packed: bytes = msgpack.packb(sale.to_wire(), use_bin_type=True)
    return packed


def sale_of(data: bytes) -> Sale:
    """The sale :func:`sale_bytes` stored (our own bytes: a failure is a damaged row)."""
    try:
        return sale_from_wire(msgpack.unpackb(data, raw=False))
    except (ValueError, msgpack.UnpackException) as exc:
        raise LocalProtocolError(f"a stored sale is unreadable: {exc}", code="bad_sale") from exc
