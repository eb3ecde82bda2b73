"""Canonical forms of what customers are looked up by (pure functions).

The edge normalises before it builds an op, so the cloud, every other edge
and every lookup see one spelling of a phone, an email or a name.
"""

from __future__ import annotations

import re
import unicodedata

from .errors import LocalProtocolError

_PHONE_PUNCT = re.compile(r"[\s().\-/]")


def phone(value: str) -> str:
    """Digits with an optional leading +; spaces, dots, dashes and brackets dropped."""
    cleaned = _PHONE_PUNCT.sub("", value.strip())
    body = cleaned[1:] if cleaned.startswith("+") else cleaned
    if not body.isdigit() or not 4 <= len(body) <= 15 or not body.isascii():
        raise LocalProtocolError("phone must hold 4 to 15 digits", code="invalid_value", field="phone")
    return cleaned


def email(value: str) -> str:
    cleaned = value.strip().lower()
    local, at, domain = cleaned.partition("@")
    if not at or not local or "." not in domain or " " in cleaned:
        raise LocalProtocolError("email is not an address", code="invalid_value", field="email")
    return cleaned


def card_code(value: str) -> str:
    cleaned = value.strip()
    if not cleaned or not cleaned.isprintable() or " " in cleaned:
        raise LocalProtocolError(
            "card code must be printable with no spaces", code="invalid_value", field="card_code"
        )
    return cleaned


def name_key(value: str) -> str:
    """Case- and accent-insensitive key for prefix search: 'Hélène' → 'helene'."""
    decomposed = unicodedata.normalize("NFKD", value.strip().casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))
