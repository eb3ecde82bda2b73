"""Portal sign-in codes: six digits from ``secrets``, 10 minutes, single use, 5 tries.

Stored as keyed hashes only (HMAC-SHA256 under the portal secret, a 0600
file outside the database): a copy of the database gives neither the codes
nor, by brute force over a million values, the code of a live challenge.
Contacts (phones, emails) and client addresses are also stored as keyed
hashes, in the attempt counters that survive a restart:

- codes sent: at most ``CODES_PER_CONTACT`` per phone/email and
  ``CODES_PER_ADDRESS`` per client address per hour;
- wrong codes: at most ``MAX_TRIES`` per code, ``FAILURES_PER_CONTACT``
  per phone/email and ``FAILURES_PER_ADDRESS`` per address per hour.

A refused request changes nothing except the failure counters it must
count. The rules live here; the storage only runs each decision's reads and
writes in one transaction (``Storage.portal_tx``). Time is passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, replace

from .engagement_model import Channel, OtpChallenge
from .storage import Storage

CODE_DIGITS = 6
CODE_TTL_MS = 10 * 60 * 1000
MAX_TRIES = 5
LIMIT_WINDOW_MS = 3600 * 1000
CODES_PER_CONTACT = 5
CODES_PER_ADDRESS = 20
FAILURES_PER_CONTACT = 10
FAILURES_PER_ADDRESS = 30


class PortalKeys:
    """Keyed hashes under the portal secret, one label per use so no hash stands for another."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the portal secret must hold at least 16 bytes")
        self._secret = secret

    def mac(self, label: str, value: str) -> str:
        return hmac.new(self._secret, f"{label}\x00{value}".encode(), hashlib.sha256).hexdigest()

    def contact_hash(self, brand_id: str, contact: Contact) -> str:
        return self.mac("contact", f"{brand_id}\x00{contact.channel.value}\x00{contact.value}")

    def code_hash(self, challenge_id: str, code: str) -> str:
        return self.mac("code", f"{challenge_id}\x00{code}")

    def address_hash(self, address: str) -> str:
        return self.mac("address", address)

    def token_hash(self, token: str) -> str:
        return self.mac("session", token)

    def csrf_for(self, cookie_value: str) -> str:
        return self.mac("csrf", cookie_value)


@dataclass(frozen=True, slots=True)
class Contact:
    """A normalised phone (E.164) or email the customer signs in with."""

    channel: Channel
    value: str


class OtpRefused(Exception):
    """The code was not issued or not accepted; ``code`` says why, ``message`` says it to a person."""

    def __init__(self, code: str, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class IssuedCode:
    challenge_id: str
    code: str  # to send, never to store or log
    expires_at: int


def new_code() -> str:
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


def _window(now: int) -> int:
    return now - now % LIMIT_WINDOW_MS


async def issue_code(storage: Storage, keys: PortalKeys, *, brand_id: str, contact: Contact, client: str,
                     now: int) -> IssuedCode:
    """A new challenge for ``contact``, within the per-contact and per-address limits."""
    contact_key = "sent:contact:" + keys.contact_hash(brand_id, contact)
    address_key = "sent:address:" + keys.address_hash(client)
    window = _window(now)
    code = new_code()
    challenge_id = secrets.token_urlsafe(18)
    async with storage.portal_tx() as tx:
        if await tx.count(contact_key, window, 0) >= CODES_PER_CONTACT:
            raise OtpRefused("too_many_codes", "Too many codes were sent to this contact. Try again in an hour.",
                             status=429)
        if await tx.count(address_key, window, 0) >= CODES_PER_ADDRESS:
            raise OtpRefused("too_many_codes", "Too many codes were asked from here. Try again in an hour.",
                             status=429)
        await tx.count(contact_key, window, 1)
        await tx.count(address_key, window, 1)
        await tx.save_challenge(OtpChallenge(
            challenge_id=challenge_id, brand_id=brand_id, contact_hash=keys.contact_hash(brand_id, contact),
            code_hash=keys.code_hash(challenge_id, code), created_at=now, expires_at=now + CODE_TTL_MS,
            tries=0, used_at=None,
        ))
    return IssuedCode(challenge_id, code, now + CODE_TTL_MS)


async def verify_code(storage: Storage, keys: PortalKeys, *, brand_id: str, challenge_id: str, contact: Contact,
                      code: str, client: str, now: int) -> None:
    """Accept ``code`` once, or raise OtpRefused (after recording the failed try)."""
    contact_key = "failed:contact:" + keys.contact_hash(brand_id, contact)
    address_key = "failed:address:" + keys.address_hash(client)
    window = _window(now)
    refusal: OtpRefused | None = None
    async with storage.portal_tx() as tx:
        if (await tx.count(address_key, window, 0) >= FAILURES_PER_ADDRESS
                or await tx.count(contact_key, window, 0) >= FAILURES_PER_CONTACT):
            raise OtpRefused("too_many_attempts", "Too many wrong codes. Try again in an hour.", status=429)
        challenge = await tx.challenge(challenge_id)
        if (challenge is None or challenge.brand_id != brand_id
                or not hmac.compare_digest(challenge.contact_hash, keys.contact_hash(brand_id, contact))):
            refusal = OtpRefused("unknown_code", "This code request is not known. Ask for a new code.")
        elif challenge.used_at is not None:
            raise OtpRefused("code_used", "This code was already used. Ask for a new code.")
        elif now >= challenge.expires_at:
            raise OtpRefused("code_expired", "This code has expired (codes last 10 minutes). Ask for a new one.")
        elif challenge.tries >= MAX_TRIES:
            raise OtpRefused("too_many_tries", "Too many wrong tries for this code. Ask for a new one.", status=429)
        elif not (len(code) == CODE_DIGITS and code.isdigit()
                  and hmac.compare_digest(challenge.code_hash, keys.code_hash(challenge_id, code))):
            tries = challenge.tries + 1
            await tx.save_challenge(replace(challenge, tries=tries))
            left = MAX_TRIES - tries
            refusal = OtpRefused("wrong_code", f"That code is not right. {left} {'try' if left == 1 else 'tries'} left."
                                 if left else "That code is not right, and it was the last try. Ask for a new code.")
        else:
            await tx.save_challenge(replace(challenge, used_at=now))
            return
        await tx.count(address_key, window, 1)
        await tx.count(contact_key, window, 1)
    raise refusal


def contact_hashes(keys: PortalKeys, brand_id: str, phone: str | None, email: str | None) -> list[str]:
    """The keyed hashes the portal filed a customer's sign-in codes and counters under, so an
    erasure can delete them (``cloud.erasure``)."""
    contacts = [Contact(Channel.PHONE, phone)] if phone else []
    contacts += [Contact(Channel.EMAIL, email)] if email else []
    return [keys.contact_hash(brand_id, c) for c in contacts]
