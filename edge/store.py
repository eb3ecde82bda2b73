"""The edge's local store: one writer thread (group commit) and a read connection.

Reads are short indexed queries run on the event loop's thread through a
plain ``sqlite3`` connection: an indexed lookup costs ~20 µs, while a hop to
a worker thread (aiosqlite's model) costs 50-300 µs, and WAL readers never
wait for the writer. Anything that must be atomic with a write (a balance
check before a redemption) runs inside the writer's job instead.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import msgpack

from protocol import Program, available_points
from protocol.earning import Customer as RulesCustomer
from protocol.expiry import expired_by, expiring_soon

from .db import connect, migrate
from .errors import NotFound, StoreError
from .merges import resolve
from .writer import Writer

log = logging.getLogger(__name__)
T = TypeVar("T")

# One statement per customer: the profile and its unconfirmed sums (a
# correlated lookup on the partial index of pending ops).
CUSTOMER_COLUMNS = (
    "customer_id, name, phone, email, card_code, consent, confirmed, created_at, groups, opted_out, expiring, "
    "(SELECT COALESCE(SUM(delta), 0) FROM outbox WHERE outbox.customer_id = customers.customer_id "
    "AND status IS NULL), "
    "(SELECT COALESCE(SUM(debit), 0) FROM outbox WHERE outbox.customer_id = customers.customer_id "
    "AND status IS NULL)"
)
#: Points expiring within this many days are shown on the profile and the quote.
EXPIRING_SOON_DAYS = 30


def now_ms() -> int:
    return int(time.time() * 1000)


def get_meta(conn: sqlite3.Connection, key: str, default: Any = None) -> Any:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return default if row is None else row[0]


def set_meta(conn: sqlite3.Connection, key: str, value: Any) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def load_program(conn: sqlite3.Connection) -> Program | None:
    raw = get_meta(conn, "program")
    if raw is None:
        return None
    return Program(**msgpack.unpackb(raw, raw=False))


def save_program(conn: sqlite3.Connection, program: Program) -> None:
    """Make ``program`` the current one and keep it in the history: a refund
    recomputes its sale's earn with the version the earn was rated with."""
    body = msgpack.packb(asdict(program), use_bin_type=True)
    set_meta(conn, "program", body)
    conn.execute("INSERT OR REPLACE INTO programs (version, body) VALUES (?, ?)", (program.version, body))


def program_at(conn: sqlite3.Connection, version: int) -> Program | None:
    row = conn.execute("SELECT body FROM programs WHERE version = ?", (version,)).fetchone()
    if row is not None:
        return Program(**msgpack.unpackb(row[0], raw=False))
    current = load_program(conn)  # stored before the history existed
    return current if current is not None and current.version == version else None


def rated_as(groups: str, opted_out: int) -> RulesCustomer:
    """What the earning rules know of a customer, from their columns."""
    return RulesCustomer(() if groups == "[]" else tuple(json.loads(groups)), bool(opted_out))


def customer_rating(conn: sqlite3.Connection, customer_id: str) -> RulesCustomer:
    row = conn.execute("SELECT groups, opted_out FROM customers WHERE customer_id = ?", (customer_id,)).fetchone()
    if row is None:
        raise NotFound("no customer with this id", code="unknown_customer", field="customer_id")
    return rated_as(row[0], row[1])


def balance_of(conn: sqlite3.Connection, customer_id: str, now: int) -> dict[str, int]:
    """Confirmed (from the cloud), pending (local, unconfirmed) and available to redeem."""
    # One pass over the customer's pending ops (the partial index) for both sums.
    confirmed, expiring, pending, debits = conn.execute(
        "SELECT c.confirmed, c.expiring, COALESCE(SUM(o.delta), 0), COALESCE(SUM(o.debit), 0) FROM customers c "
        "LEFT JOIN outbox o ON o.customer_id = c.customer_id AND o.status IS NULL WHERE c.customer_id = ?",
        (customer_id,),
    ).fetchone()
    if confirmed is None:
        raise NotFound("no customer with this id", code="unknown_customer", field="customer_id")
    return _balance(confirmed, pending, debits, expiring, now)


def _balance(confirmed: int, pending: int, debits: int, expiring: str, now: int) -> dict[str, int]:
    # Most customers have nothing expiring: skip the parse for the empty list.
    expired = 0 if expiring == "[]" else expired_by(json.loads(expiring), now)
    return {"confirmed": confirmed, "pending": pending, "available": available_points(confirmed, debits, expired)}


def customer_json(row: tuple[Any, ...], now: int) -> dict[str, Any]:
    (customer_id, name, phone, email, card_code, consent, confirmed, created_at, groups, opted_out, expiring,
     pending, debits) = row
    upcoming = [] if expiring == "[]" else [(at, points) for at, points in json.loads(expiring)]
    return {
        "customer_id": customer_id,
        "name": name,
        "phone": phone,
        "email": email,
        "card_code": card_code,
        "consent": json.loads(consent) if consent else None,
        "groups": json.loads(groups),
        "opted_out": bool(opted_out),
        "balance": _balance(confirmed, pending, debits, expiring, now),
        "expiring_soon": expiring_soon(upcoming, now, EXPIRING_SOON_DAYS),
        "created_at": created_at,
    }


def fetch_customer(conn: sqlite3.Connection, customer_id: str, now: int) -> dict[str, Any]:
    row = conn.execute(
        f"SELECT {CUSTOMER_COLUMNS} FROM customers WHERE customer_id = ?", (customer_id,)
    ).fetchone()
    if row is None:
        raise NotFound("no customer with this id", code="unknown_customer", field="customer_id")
    return customer_json(row, now)


def _live(conn: sqlite3.Connection, rows: list[tuple[Any, ...]], now: int) -> list[dict[str, Any]]:
    """Found profiles (CUSTOMER_COLUMNS + merged_into), a merged one shown as its survivor, each once."""
    found: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row[-1] is None:
            profile = customer_json(row[:-1], now)
        else:
            try:
                profile = fetch_customer(conn, resolve(conn, row[-1]), now)
            except NotFound:  # the survivor comes with the downlink's next page
                continue
        found.setdefault(profile["customer_id"], profile)
    return list(found.values())


class EdgeStore:
    """Opens, migrates and owns the edge database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer = Writer(path)
        self._reader: sqlite3.Connection | None = None
        self._program: Program | None = None
        self.started_at = time.time()

    @classmethod
    def initialise(cls, path: Path) -> None:
        """Create and migrate the database file (used by ``init`` and ``serve``)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(path)
        try:
            migrate(conn)
        finally:
            conn.close()
        os.chmod(path, 0o600)

    async def open(self) -> None:
        try:
            self.initialise(self.path)
            self.writer.start()
            self._reader = connect(self.path)
            # Lookups hit random customers: memory-map the file and keep a
            # large page cache so a lookup is a memory read, not a syscall.
            self._reader.execute("PRAGMA mmap_size = 1073741824")
            self._reader.execute("PRAGMA cache_size = -65536")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc

    async def close(self) -> None:
        await self.writer.close()
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    @property
    def reader(self) -> sqlite3.Connection:
        if self._reader is None:
            raise StoreError("the store is closed")
        return self._reader

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a short read on the loop thread; sqlite errors become StoreError."""
        try:
            return fn(self.reader)
        except sqlite3.Error as exc:
            raise StoreError(f"the local database failed a read: {exc}") from exc

    async def write(self, job: Callable[[sqlite3.Connection], T]) -> T:
        return await self.writer.run(job)

    # -------------------------------------------------------------- reads

    def meta(self, key: str, default: Any = None) -> Any:
        return self.read(lambda c: get_meta(c, key, default))

    def program(self) -> Program | None:
        """The program settings, cached: only a downlink changes them, and the
        sync task calls :meth:`forget_program` after applying one."""
        if self._program is None:
            self._program = self.read(load_program)
        return self._program

    def forget_program(self) -> None:
        self._program = None

    def customer(self, customer_id: str, now: int | None = None) -> dict[str, Any]:
        """The profile; a merged duplicate's id gives its survivor's."""
        at = now_ms() if now is None else now
        return self.read(lambda c: fetch_customer(c, resolve(c, customer_id), at))

    def resolve(self, customer_id: str) -> str:
        """The live profile's id: the survivor's when ``customer_id`` was merged into it."""
        return self.read(lambda c: resolve(c, customer_id))

    def rating(self, customer_id: str) -> RulesCustomer:
        """The customer's groups and opt-out, as the earning rules see them."""
        return self.live_rating(customer_id)[1]

    def live_rating(self, customer_id: str) -> tuple[str, RulesCustomer]:
        """The live profile's id (the survivor's for a merged one) and its rating: one indexed read
        for a profile that was never merged (the earn path's only read before its write)."""
        def run(conn: sqlite3.Connection) -> tuple[str, RulesCustomer]:
            row = conn.execute("SELECT merged_into, groups, opted_out FROM customers WHERE customer_id = ?",
                               (customer_id,)).fetchone()
            if row is None:
                raise NotFound("no customer with this id", code="unknown_customer", field="customer_id")
            if row[0] is None:
                return customer_id, rated_as(row[1], row[2])
            live = resolve(conn, row[0])
            return live, customer_rating(conn, live)

        return self.read(run)

    def find(self, by: str, value: str, limit: int, now: int | None = None) -> list[dict[str, Any]]:
        """Customers by an exact phone, email or card code, or by name prefix."""
        def run(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            if by == "name":
                # Range scan on the name index; ranked by name then age, bounded.
                rows = conn.execute(
                    f"SELECT {CUSTOMER_COLUMNS}, merged_into FROM customers WHERE name_key >= ? AND name_key < ? "
                    "ORDER BY name_key, created_at LIMIT ?",
                    (value, value + "\U0010ffff", limit),
                ).fetchall()
            else:
                column = {"phone": "phone", "email": "email", "code": "card_code"}[by]
                rows = conn.execute(
                    f"SELECT {CUSTOMER_COLUMNS}, merged_into FROM customers WHERE {column} = ? "
                    "ORDER BY created_at LIMIT ?",
                    (value, limit),
                ).fetchall()
            at = now_ms() if now is None else now
            return _live(conn, rows, at)

        return self.read(run)

    def conflicts(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self.read(
            lambda c: c.execute(
                "SELECT op_id, kind, customer_id, terminal_id, sale_id, points, code, op_at, recorded_at "
                "FROM conflicts ORDER BY recorded_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        )
        keys = ("op_id", "kind", "customer_id", "terminal_id", "sale_id", "points", "code", "at", "recorded_at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def outbox_summary(self, now: int) -> dict[str, Any]:
        def run(conn: sqlite3.Connection) -> dict[str, Any]:
            depth, oldest = conn.execute(
                "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE status IS NULL"
            ).fetchone()
            conflicts = conn.execute("SELECT COUNT(*) FROM conflicts").fetchone()[0]
            last_batch = conn.execute("SELECT MAX(seq) FROM batches").fetchone()[0]
            return {
                "depth": depth,
                "oldest_age_s": 0.0 if oldest is None else max(0.0, (now - oldest) / 1000),
                "conflicts": conflicts,
                "last_batch_seq": last_batch or 0,
            }

        return self.read(run)
