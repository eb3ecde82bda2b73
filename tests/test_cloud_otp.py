"""Portal sign-in codes on both backends: 10 minutes (an injected clock), single use,
5 tries per code, limits per phone/email and per client address that survive a
restart, and nothing but keyed hashes in the database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloud.engagement_model import Channel
from cloud.otp import (
    CODE_TTL_MS,
    CODES_PER_ADDRESS,
    CODES_PER_CONTACT,
    FAILURES_PER_ADDRESS,
    LIMIT_WINDOW_MS,
    MAX_TRIES,
    Contact,
    OtpRefused,
    PortalKeys,
    issue_code,
    verify_code,
)
from cloud.storage import Storage

from . import cloudkit as k

KEYS = PortalKeys(b"s" * 32)
PHONE = Contact(Channel.PHONE, "+33611223344")
EMAIL = Contact(Channel.EMAIL, "ada@example.org")
T0 = 1_790_000_000_000 - 1_790_000_000_000 % LIMIT_WINDOW_MS + 1000  # early in an hour's window
CLIENT = "192.0.2.7"


@pytest.fixture
async def storage(tmp_path: Path, backend: k.Backend) -> AsyncIterator[Storage]:
    opened = backend.storage(tmp_path)
    await opened.open(k.now_ms())
    try:
        yield opened
    finally:
        await opened.close()


async def refused(code: str, coro: object) -> OtpRefused:
    with pytest.raises(OtpRefused) as info:
        await coro  # type: ignore[misc]
    assert info.value.code == code, info.value.message
    return info.value


def other(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


async def test_a_code_is_good_once_and_for_ten_minutes(storage: Storage, tmp_path: Path,
                                                      backend: k.Backend) -> None:
    issued = await issue_code(storage, KEYS, brand_id="acme", contact=PHONE, client=CLIENT, now=T0)
    assert len(issued.code) == 6 and issued.code.isdigit() and issued.expires_at == T0 + CODE_TTL_MS
    # Another contact, brand or challenge cannot use it.
    await refused("unknown_code", verify_code(storage, KEYS, brand_id="acme", challenge_id=issued.challenge_id,
                                             contact=EMAIL, code=issued.code, client=CLIENT, now=T0))
    await refused("unknown_code", verify_code(storage, KEYS, brand_id="zeta", challenge_id=issued.challenge_id,
                                             contact=PHONE, code=issued.code, client=CLIENT, now=T0))
    await verify_code(storage, KEYS, brand_id="acme", challenge_id=issued.challenge_id, contact=PHONE,
                      code=issued.code, client=CLIENT, now=T0 + CODE_TTL_MS - 1)
    await refused("code_used", verify_code(storage, KEYS, brand_id="acme", challenge_id=issued.challenge_id,
                                          contact=PHONE, code=issued.code, client=CLIENT, now=T0 + 2))
    late = await issue_code(storage, KEYS, brand_id="acme", contact=PHONE, client=CLIENT, now=T0)
    error = await refused("code_expired", verify_code(
        storage, KEYS, brand_id="acme", challenge_id=late.challenge_id, contact=PHONE, code=late.code,
        client=CLIENT, now=T0 + CODE_TTL_MS))
    assert "10 minutes" in error.message
    # Only keyed hashes are stored: no code, no phone.
    rows = [*await backend.rows(tmp_path / "cloud.sqlite3", "SELECT * FROM otp_challenges"),
            *await backend.rows(tmp_path / "cloud.sqlite3", "SELECT * FROM portal_limits")]
    text = repr(rows)
    assert rows and issued.code not in text and late.code not in text and "611223344" not in text


async def test_five_tries_per_code(storage: Storage) -> None:
    issued = await issue_code(storage, KEYS, brand_id="acme", contact=EMAIL, client=CLIENT, now=T0)
    messages = []
    for _ in range(MAX_TRIES):
        messages.append((await refused("wrong_code", verify_code(
            storage, KEYS, brand_id="acme", challenge_id=issued.challenge_id, contact=EMAIL,
            code=other(issued.code), client=CLIENT, now=T0))).message)
    assert "4 tries left" in messages[0] and "1 try left" in messages[3] and "last try" in messages[4]
    error = await refused("too_many_tries", verify_code(
        storage, KEYS, brand_id="acme", challenge_id=issued.challenge_id, contact=EMAIL, code=issued.code,
        client=CLIENT, now=T0))
    assert error.status == 429
    for bad in ("", "12345", "1234567", "abcdef"):  # not even six digits: a wrong try like any other
        fresh = await issue_code(storage, KEYS, brand_id="acme", contact=EMAIL, client=CLIENT, now=T0 + 1)
        await refused("wrong_code", verify_code(storage, KEYS, brand_id="acme", challenge_id=fresh.challenge_id,
                                                contact=EMAIL, code=bad, client=CLIENT, now=T0 + 1))


async def test_codes_per_contact_and_per_address_are_limited_across_a_restart(
        storage: Storage, tmp_path: Path, backend: k.Backend) -> None:
    for n in range(CODES_PER_CONTACT):
        await issue_code(storage, KEYS, brand_id="acme", contact=PHONE, client=f"198.51.100.{n}", now=T0 + n)
    await storage.close()
    restarted = backend.storage(tmp_path)  # the app restarts on the same database
    await restarted.open(k.now_ms())
    try:
        error = await refused("too_many_codes", issue_code(restarted, KEYS, brand_id="acme", contact=PHONE,
                                                           client="203.0.113.9", now=T0 + 100))
        assert error.status == 429
        # Another brand's phone counter is its own; the next hour starts afresh.
        await issue_code(restarted, KEYS, brand_id="zeta", contact=PHONE, client="203.0.113.9", now=T0 + 100)
        await issue_code(restarted, KEYS, brand_id="acme", contact=PHONE, client="203.0.113.9",
                         now=T0 + LIMIT_WINDOW_MS)
        for n in range(CODES_PER_ADDRESS):
            contact = Contact(Channel.EMAIL, f"c{n}@example.org")
            await issue_code(restarted, KEYS, brand_id="acme", contact=contact, client=CLIENT, now=T0 + n)
        await refused("too_many_codes", issue_code(restarted, KEYS, brand_id="acme", contact=EMAIL, client=CLIENT,
                                                   now=T0 + 50))
        await issue_code(restarted, KEYS, brand_id="acme", contact=EMAIL, client="203.0.113.10", now=T0 + 50)
    finally:
        await restarted.close()


async def test_wrong_codes_per_address_are_limited_even_for_a_right_code(storage: Storage, tmp_path: Path,
                                                                          backend: k.Backend) -> None:
    guessed = 0
    while guessed < FAILURES_PER_ADDRESS:  # an attacker spreads guesses over many codes and contacts
        contact = Contact(Channel.EMAIL, f"victim{guessed}@example.org")
        issued = await issue_code(storage, KEYS, brand_id="acme", contact=contact, client=f"10.0.0.{guessed}",
                                  now=T0)
        for _ in range(min(MAX_TRIES, FAILURES_PER_ADDRESS - guessed)):
            await refused("wrong_code", verify_code(storage, KEYS, brand_id="acme",
                                                    challenge_id=issued.challenge_id, contact=contact,
                                                    code=other(issued.code), client=CLIENT, now=T0))
            guessed += 1
    mine = await issue_code(storage, KEYS, brand_id="acme", contact=PHONE, client="10.1.1.1", now=T0)
    await storage.close()
    restarted = backend.storage(tmp_path)
    await restarted.open(k.now_ms())
    try:
        await refused("too_many_attempts", verify_code(restarted, KEYS, brand_id="acme",
                                                       challenge_id=mine.challenge_id, contact=PHONE,
                                                       code=mine.code, client=CLIENT, now=T0 + 5))
        # From another address the right code still works (the per-phone counter is clean).
        await verify_code(restarted, KEYS, brand_id="acme", challenge_id=mine.challenge_id, contact=PHONE,
                          code=mine.code, client="10.9.9.9", now=T0 + 5)
        assert await restarted.prune_portal(T0 + 2 * LIMIT_WINDOW_MS, LIMIT_WINDOW_MS) > 0
        assert await backend.rows(tmp_path / "cloud.sqlite3", "SELECT * FROM otp_challenges") == []
    finally:
        await restarted.close()
