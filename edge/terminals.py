"""Pairing and terminal tokens.

``loyalty-edge pair`` stores the hash of a short-lived, single-use code; a
terminal trades the code for its own bearer token, of which the edge keeps
only the SHA-256. A stolen database therefore yields no working token.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from protocol import uuid7

from .errors import TooManyRequests, Unauthorized
from .store import EdgeStore

PAIRING_TTL_MS = 10 * 60 * 1000
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I/L to misread
CODE_LENGTH = 8
MAX_PAIR_FAILURES_PER_MINUTE = 10
AUTH_CACHE_SECONDS = 5.0


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def normalise_code(code: str) -> str:
    return code.replace("-", "").replace(" ", "").upper()


def create_pairing_code(conn: sqlite3.Connection, now_ms: int) -> str:
    """Store a new pairing code's hash and return the code, formatted ABCD-EFGH."""
    code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
    conn.execute("DELETE FROM pairing_codes WHERE expires_at < ?", (now_ms,))
    conn.execute(
        "INSERT INTO pairing_codes (code_hash, expires_at) VALUES (?, ?)", (_hash(code), now_ms + PAIRING_TTL_MS)
    )
    return f"{code[:4]}-{code[4:]}"


def redeem_pairing_code(code: str, name: str, now_ms: int) -> Callable[[sqlite3.Connection], dict[str, str]]:
    def job(conn: sqlite3.Connection) -> dict[str, str]:
        row = conn.execute(
            "SELECT expires_at, used_at FROM pairing_codes WHERE code_hash = ?", (_hash(normalise_code(code)),)
        ).fetchone()
        if row is None or row[1] is not None or row[0] < now_ms:
            raise Unauthorized("this pairing code is unknown, used or expired", code="bad_pairing_code", field="code")
        conn.execute("UPDATE pairing_codes SET used_at = ? WHERE code_hash = ?", (now_ms, _hash(normalise_code(code))))
        terminal_id = uuid7(now_ms)
        token = secrets.token_urlsafe(32)
        conn.execute(
            "INSERT INTO terminals (terminal_id, name, token_hash, created_at) VALUES (?, ?, ?, ?)",
            (terminal_id, name, _hash(token), now_ms),
        )
        return {"terminal_id": terminal_id, "token": token, "name": name}

    return job


def list_terminals(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT terminal_id, name, created_at, last_seen, revoked_at FROM terminals ORDER BY created_at"
    ).fetchall()
    keys = ("terminal_id", "name", "created_at", "last_seen", "revoked_at")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def revoke_terminal(conn: sqlite3.Connection, terminal_id: str, now_ms: int) -> bool:
    cursor = conn.execute(
        "UPDATE terminals SET revoked_at = ? WHERE terminal_id = ? AND revoked_at IS NULL", (now_ms, terminal_id)
    )
    return cursor.rowcount == 1


class TerminalAuth:
    """Checks bearer tokens against the store, with a short in-memory cache.

    The cache keeps the hot path free of I/O; its five-second life bounds how
    long a token revoked from the CLI (another process) keeps working.
    """

    def __init__(self, store: EdgeStore, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.clock = clock
        self._cache: dict[str, tuple[str, float]] = {}
        self._failures: deque[float] = deque()
        self.last_seen: dict[str, int] = {}

    def authenticate(self, header: str | None, now_ms: int) -> str:
        if not header or not header.startswith("Bearer "):
            raise Unauthorized("a terminal token is required (Authorization: Bearer ...)", code="missing_token")
        token = header[7:].strip()
        now = self.clock()
        # Keyed by the token itself: a hit needs no hashing. Memory only;
        # the database never holds more than the hash.
        cached = self._cache.get(token)
        if cached is not None and cached[1] > now:
            terminal_id = cached[0]
        else:
            digest = _hash(token)
            row = self.store.read(
                lambda c: c.execute(
                    "SELECT terminal_id FROM terminals WHERE token_hash = ? AND revoked_at IS NULL", (digest,)
                ).fetchone()
            )
            if row is None:
                self._cache.pop(token, None)
                raise Unauthorized("this terminal token is unknown or revoked", code="bad_token")
            terminal_id = row[0]
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[token] = (terminal_id, now + AUTH_CACHE_SECONDS)
        self.last_seen[terminal_id] = now_ms
        return terminal_id

    def check_pairing_rate(self) -> None:
        now = self.clock()
        while self._failures and self._failures[0] < now - 60:
            self._failures.popleft()
        if len(self._failures) >= MAX_PAIR_FAILURES_PER_MINUTE:
            raise TooManyRequests("too many failed pairing attempts; wait a minute", code="pairing_rate_limited")

    def pairing_failed(self) -> None:
        self._failures.append(self.clock())

    def flush_last_seen(self) -> Callable[[sqlite3.Connection], None]:
        seen, self.last_seen = self.last_seen, {}

        def job(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE terminals SET last_seen = MAX(COALESCE(last_seen, 0), ?) WHERE terminal_id = ?",
                [(at, tid) for tid, at in seen.items()],
            )

        return job
