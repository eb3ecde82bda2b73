"""Canonical forms of what customers are looked up by (pure functions).

The edge normalises before it builds an op, so the cloud, every other edge
and every lookup see one spelling of a phone, an email or a name.
"""

from __future__ import annotations

import re
import unicodedata

import phonenumbers

from .errors import LocalProtocolError

_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")


def is_region(code: str) -> bool:
    """A region phonenumbers knows (ISO 3166 alpha-2, e.g. "CA", "FR")."""
    return code in phonenumbers.SUPPORTED_REGIONS


def phone(value: str, default_region: str | None = None) -> str:
    """E.164 (+15145550100) from any common format. A number without its
    country code takes the store's default region's; with no default region
    it must carry one. Numbers are checked for a possible length, not for
    being assigned, so that test and new ranges still work."""
    text = value.strip()
    if _E164.match(text):
        return text  # the common case at the till, and the lookup hot path: no parsing
    try:
        number = phonenumbers.parse(text, default_region or None)
    except phonenumbers.NumberParseException as exc:
        hint = "" if default_region else " (add the country code, e.g. +1, or set the store's default region)"
        raise LocalProtocolError(f"phone is not a phone number{hint}", code="invalid_value", field="phone") from exc
    if not phonenumbers.is_possible_number(number):
        raise LocalProtocolError("phone has the wrong number of digits", code="invalid_value", field="phone")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


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
