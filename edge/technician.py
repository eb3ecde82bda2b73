"""Who may read the status page and its data.

From the node itself (loopback) always; from the store LAN only when the
config holds a technician password hash, and then only with HTTP Basic
credentials that match it. The config keeps an scrypt hash, never the
password, and the comparison takes constant time.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

SCHEME = "scrypt"
N, R, P = 2**14, 8, 1
REALM = 'Basic realm="loyalty-edge status", charset="UTF-8"'
MAX_FAILURES_PER_MINUTE = 10
GOOD_FOR_S = 300.0


class BadHash(ValueError):
    pass


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$salt$hash`` (hex), for ``technician_password_hash`` in edge.toml."""
    if len(password) < 8:
        raise ValueError("a technician password needs at least 8 characters")
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, dklen=32)
    return f"{SCHEME}${N}${R}${P}${salt.hex()}${digest.hex()}"


@dataclass(frozen=True, slots=True)
class PasswordHash:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, text: str) -> PasswordHash:
        parts = text.split("$")
        if len(parts) != 6 or parts[0] != SCHEME:
            raise BadHash("must be scrypt$N$r$p$salt$hash (from `loyalty-edge technician-password`)")
        try:
            n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            salt, digest = bytes.fromhex(parts[4]), bytes.fromhex(parts[5])
        except ValueError as exc:
            raise BadHash("must be scrypt$N$r$p$salt$hash with decimal numbers and hex bytes") from exc
        if not (2 <= n <= 2**20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
            raise BadHash("scrypt parameters out of range")
        if len(salt) < 8 or len(digest) < 16:
            raise BadHash("salt or hash too short")
        return cls(n, r, p, salt, digest)

    def matches(self, password: str) -> bool:
        candidate = hashlib.scrypt(
            password.encode(), salt=self.salt, n=self.n, r=self.r, p=self.p, dklen=len(self.digest),
            maxmem=128 * self.n * self.r * self.p + 1024 * 1024,
        )
        return hmac.compare_digest(candidate, self.digest)


def is_loopback(remote: str | None) -> bool:
    try:
        return ipaddress.ip_address(remote or "").is_loopback
    except ValueError:
        return False


def basic_password(header: str | None) -> str | None:
    """The password of an ``Authorization: Basic`` header (any user name), or None."""
    if not header or not header[:6].lower() == "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, sep, password = decoded.partition(":")
    return password if sep else None


class TechnicianGate:
    """Decides each status request: ``"ok"``, ``"local_only"`` (403, no password
    configured), ``"login"`` (401, ask for credentials) or ``"slow_down"`` (429).

    scrypt costs tens of milliseconds by design, so it runs off the event
    loop, a header that matched is remembered for a few minutes (the page
    refreshes every 10 s), and wrong guesses are limited per minute: a LAN
    peer guessing passwords cannot stall the terminals' API.
    """

    def __init__(self, password_hash: str | None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._hash = None if password_hash is None else PasswordHash.parse(password_hash)
        self._clock = clock
        self._good: dict[bytes, float] = {}
        self._failures: deque[float] = deque()

    async def check(self, remote: str | None, authorization: str | None) -> str:
        if is_loopback(remote):
            return "ok"
        if self._hash is None:
            return "local_only"
        password = basic_password(authorization)
        if password is None or authorization is None:
            return "login"
        key = hashlib.sha256(authorization.encode()).digest()
        now = self._clock()
        if self._good.get(key, 0.0) > now:
            return "ok"
        while self._failures and self._failures[0] < now - 60:
            self._failures.popleft()
        if len(self._failures) >= MAX_FAILURES_PER_MINUTE:
            return "slow_down"
        if await asyncio.to_thread(self._hash.matches, password):
            if len(self._good) > 100:
                self._good.clear()
            self._good[key] = now + GOOD_FOR_S
            return "ok"
        self._failures.append(now)
        return "login"


GATE = web.AppKey("technician_gate", TechnicianGate)
