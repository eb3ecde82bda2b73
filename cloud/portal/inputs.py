"""What a person types into the portal's forms, checked and normalised (pure)."""

from __future__ import annotations

from protocol import ProtocolError, normalize
from protocol.sale import looks_like_card_number

from ..engagement_model import Channel
from ..otp import Contact


def parse_contact(text: str, region: str | None) -> Contact:
    value = text.strip()
    if not value:
        raise ValueError("Enter your mobile phone number or your email.")
    if len(value) > 254:
        raise ValueError("That is too long for a phone number or an email.")
    if "@" in value:
        try:
            return Contact(Channel.EMAIL, normalize.email(value))
        except ProtocolError as exc:
            raise ValueError("That email address does not look right.") from exc
    if not value.startswith("+") and looks_like_card_number(value):
        raise ValueError("That looks like a payment card number. Enter a phone number or an email.")
    try:
        return Contact(Channel.PHONE, normalize.phone(value, region))
    except ProtocolError as exc:
        hint = "" if region else " Include the country code, e.g. +1 514 555 0100."
        raise ValueError(f"That phone number does not look right.{hint}") from exc


def parse_name(text: str) -> str:
    name = text.strip()
    if not name:
        raise ValueError("Enter your first name.")
    if len(name) > 200 or not name.isprintable():
        raise ValueError("That name is too long or holds characters we cannot keep.")
    if looks_like_card_number(name):
        raise ValueError("That looks like a payment card number, not a name.")
    return name


def link_problem(exc: ProtocolError) -> str:
    if exc.code == "link_expired":
        return "This sign-up link has expired (links on receipts last 7 days). Ask at the till for a new one."
    return "This sign-up link is not valid. Scan the code on your receipt again, or ask at the till."
