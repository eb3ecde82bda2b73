"""SQLite implementation of ``Storage`` (aiosqlite, WAL, one writer).

All writes go through ONE connection, each in ``BEGIN IMMEDIATE`` under an
asyncio lock, so a batch's read-decide-write never races another writer (and
another process, such as the CLI, waits on busy_timeout instead of failing).
Reads use a separate ``query_only`` connection. State for a whole batch is
loaded with a handful of set-based queries (``IN (SELECT value FROM
json_each(?))``: one parameter however many ids) and written with
executemany, one aiosqlite round trip per statement.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from protocol import GENESIS_HASH, Program

from . import checks
from .errors import AlreadyExists, NotFound, StoreError
from .migrations import pending
from .model import (
    BalanceMismatch,
    BatchCommit,
    BrandRecord,
    ChainHead,
    ConflictRecord,
    CustomerState,
    DownlinkPage,
    KeyRecord,
    LedgerState,
    OpRecord,
    SaleState,
    StoredBatch,
    StoreRecord,
    astuple,
    key_from_row,
    program_from_row,
    stores_from_rows,
)
from .sqlite_schema import MIGRATIONS, MIGRATIONS_TABLE

log = logging.getLogger(__name__)

Row = tuple[Any, ...]

_CUSTOMER_COLS = (
    "customer_id, brand_id, name, phone, email, card_code, consent, balance, version,"
    " enrolled_store, created_at, updated_at"
)
_SALE_COLS = "store_id, sale_id, customer_id, earned, redeemed, voided_by, voided_at"
_OP_COLS = (
    "op_id, digest, store_id, seq, kind, terminal_id, customer_id, status, code, points,"
    " program_version, note, at, created_at"
)
_CONFLICT_COLS = (
    "store_id, terminal_id, customer_id, op_id, kind, points_requested, balance_available, at, created_at"
)
_KEY_SELECT = (
    "SELECT k.key_id, k.store_id, s.brand_id, k.public_key, k.created_at, k.revoked_at"
    " FROM store_keys k JOIN stores s ON s.store_id = k.store_id"
)


def _marks(cols: str) -> str:
    return ", ".join("?" for _ in cols.split(","))


async def _q(conn: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> list[Row]:
    try:
        rows = await conn.execute_fetchall(sql, params)
    except sqlite3.Error as exc:
        raise StoreError(f"SQLite failed: {exc}") from exc
    return [tuple(r) for r in rows]


async def _many(conn: aiosqlite.Connection, sql: str, rows: Iterable[Sequence[Any]]) -> None:
    batch = list(rows)
    if not batch:
        return
    try:
        cursor = await conn.executemany(sql, batch)
        await cursor.close()
    except sqlite3.Error as exc:
        raise StoreError(f"SQLite failed: {exc}") from exc


def _ids(values: Iterable[str]) -> str:
    return json.dumps(sorted(set(values)))



class _SQLiteTx:
    """The ``LedgerTx`` of one open write transaction."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def chain_head(self, store_id: str) -> ChainHead | None:
        rows = await _q(
            self._conn,
            "SELECT store_id, brand_id, last_seq, last_hash FROM stores WHERE store_id = ?",
            (store_id,),
        )
        return ChainHead(rows[0][0], rows[0][1], rows[0][2], bytes(rows[0][3])) if rows else None

    async def stored_batch(self, store_id: str, seq: int) -> StoredBatch | None:
        rows = await _q(
            self._conn,
            "SELECT store_id, seq, hash, ack FROM batches WHERE store_id = ? AND seq = ?",
            (store_id, seq),
        )
        return StoredBatch(rows[0][0], rows[0][1], bytes(rows[0][2]), bytes(rows[0][3])) if rows else None

    async def load_state(
        self,
        *,
        brand_id: str,
        store_id: str,
        op_ids: Sequence[str],
        customer_ids: Sequence[str],
        sale_ids: Sequence[str],
    ) -> LedgerState:
        conn = self._conn
        head = await _q(
            conn,
            "SELECT (SELECT value FROM counters WHERE name = 'change'),"
            " (SELECT MAX(version) FROM programs WHERE brand_id = ?)",
            (brand_id,),
        )
        customers = await _q(
            conn,
            f"SELECT {_CUSTOMER_COLS} FROM customers WHERE customer_id IN (SELECT value FROM json_each(?))",
            (_ids(customer_ids),),
        )
        sales = await _q(
            conn,
            f"SELECT {_SALE_COLS} FROM sales"
            " WHERE store_id = ? AND sale_id IN (SELECT value FROM json_each(?))",
            (store_id, _ids(sale_ids)),
        )
        ops = await _q(
            conn,
            f"SELECT {_OP_COLS} FROM ops WHERE op_id IN (SELECT value FROM json_each(?))",
            (_ids(op_ids),),
        )
        return LedgerState(
            program_version=head[0][1],
            counter=head[0][0],
            customers={r[0]: CustomerState(*r) for r in customers},
            sales={r[1]: SaleState(*r) for r in sales},
            ops={r[0]: OpRecord(r[0], bytes(r[1]), *r[2:]) for r in ops},
        )

    async def save_batch(self, commit: BatchCommit) -> None:
        conn, out = self._conn, commit.outcome
        await _many(
            conn, f"INSERT INTO ops ({_OP_COLS}) VALUES ({_marks(_OP_COLS)})", (astuple(r) for r in out.ops)
        )
        await _many(
            conn,
            f"INSERT INTO customers ({_CUSTOMER_COLS}) VALUES ({_marks(_CUSTOMER_COLS)})"
            " ON CONFLICT (customer_id) DO UPDATE SET name = excluded.name, phone = excluded.phone,"
            " email = excluded.email, card_code = excluded.card_code, balance = excluded.balance,"
            " version = excluded.version, updated_at = excluded.updated_at",
            (astuple(c) for c in out.customers),
        )
        await _many(
            conn,
            f"INSERT INTO sales ({_SALE_COLS}) VALUES ({_marks(_SALE_COLS)})"
            " ON CONFLICT (store_id, sale_id) DO UPDATE SET earned = excluded.earned,"
            " redeemed = excluded.redeemed, voided_by = excluded.voided_by, voided_at = excluded.voided_at",
            (astuple(s) for s in out.sales),
        )
        await _many(
            conn,
            "INSERT INTO ledger_entries (customer_id, op_id, store_id, sale_id, kind, points, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (astuple(e) for e in out.entries),
        )
        await _many(
            conn,
            f"INSERT INTO conflicts ({_CONFLICT_COLS}) VALUES ({_marks(_CONFLICT_COLS)})",
            (astuple(c) for c in out.conflicts),
        )
        await _q(
            conn,
            "INSERT INTO batches (store_id, seq, hash, body, ack, at, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (commit.store_id, commit.seq, commit.hash, commit.body, commit.ack, commit.at, commit.received_at),
        )
        moved = await _q(
            conn,
            "UPDATE stores SET last_seq = ?, last_hash = ? WHERE store_id = ? AND last_seq = ?"
            " RETURNING store_id",
            (commit.seq, commit.hash, commit.store_id, commit.prev_seq),
        )
        if len(moved) != 1:  # impossible under the writer lock; never write past a moved head
            raise StoreError(f"store {commit.store_id} head moved during batch {commit.seq}")
        await _q(
            conn,
            "UPDATE counters SET value = ? WHERE name = 'change' AND value <= ?",
            (out.counter, out.counter),
        )


class SQLiteStorage:
    """The SQLite ledger at ``path`` (created and migrated by ``open``)."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"SQLiteStorage({str(self.path)!r})"

    # ---- lifecycle

    async def _connect(self, *, writer: bool) -> aiosqlite.Connection:
        try:
            conn = await aiosqlite.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        try:
            await _q(conn, f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            if writer:
                await _q(conn, "PRAGMA journal_mode = WAL")
                await _q(conn, "PRAGMA synchronous = FULL")
                await _q(conn, "PRAGMA foreign_keys = ON")
            else:
                await _q(conn, "PRAGMA query_only = ON")
        except BaseException:
            await conn.close()
            raise
        return conn

    async def open(self, now: int) -> None:
        if self._writer is not None:
            return
        # Checked here because a failed aiosqlite.connect leaves its worker thread racing the loop.
        if not self.path.parent.is_dir():
            raise StoreError(f"cannot open {self.path}: {self.path.parent} is not a directory")
        self._writer = await self._connect(writer=True)
        try:
            await self._migrate(now)
            self._reader = await self._connect(writer=False)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                try:
                    await conn.close()
                except sqlite3.Error:
                    log.exception("closing %s failed", self.path)
        self._reader = self._writer = None

    async def _migrate(self, now: int) -> None:
        async with self._write() as conn:
            await _q(conn, MIGRATIONS_TABLE)
            applied = [r[0] for r in await _q(conn, "SELECT name FROM migrations")]
            for migration in pending(applied, MIGRATIONS):
                for statement in migration.statements:
                    await _q(conn, statement)
                await _q(conn, "INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (migration.name, now))
                log.info("applied migration %s to %s", migration.name, self.path)

    # ---- transactions

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        conn = self._writer
        if conn is None:
            raise StoreError("storage is not open")
        async with self._write_lock:
            await _q(conn, "BEGIN IMMEDIATE")
            try:
                yield conn
                await _q(conn, "COMMIT")
            except BaseException:
                await self._rollback(conn)
                raise

    async def _rollback(self, conn: aiosqlite.Connection) -> None:
        try:
            if conn.in_transaction:
                await conn.execute_fetchall("ROLLBACK")
        except sqlite3.Error:
            log.exception("rollback failed on %s", self.path)

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[aiosqlite.Connection]:
        """One snapshot: statements inside see the same committed state."""
        conn = self._reader
        if conn is None:
            raise StoreError("storage is not open")
        async with self._read_lock:
            await _q(conn, "BEGIN")
            try:
                yield conn
            finally:
                await self._rollback(conn)

    @asynccontextmanager
    async def batch_tx(self) -> AsyncIterator[_SQLiteTx]:
        async with self._write() as conn:
            yield _SQLiteTx(conn)

    async def ping(self) -> None:
        async with self._read() as conn:
            await _q(conn, "SELECT 1")

    # ---- reads

    async def find_key(self, key_id: str) -> KeyRecord | None:
        async with self._read() as conn:
            rows = await _q(conn, f"{_KEY_SELECT} WHERE k.key_id = ?", (key_id,))
        return key_from_row(rows[0]) if rows else None

    async def downlink_page(self, brand_id: str, cursor: int, limit: int) -> DownlinkPage:
        async with self._read() as conn:
            rows = await _q(
                conn,
                f"SELECT {_CUSTOMER_COLS} FROM customers WHERE brand_id = ? AND version > ?"
                " ORDER BY version LIMIT ?",
                (brand_id, cursor, limit),
            )
            counter = await _q(conn, "SELECT value FROM counters WHERE name = 'change'")
            program = await self._program(conn, brand_id)
        return DownlinkPage(tuple(CustomerState(*r) for r in rows), counter[0][0], program)

    @staticmethod
    async def _program(conn: aiosqlite.Connection, brand_id: str) -> Program | None:
        rows = await _q(
            conn,
            "SELECT brand_id, version, name, points_per_unit, unit_amount, settings FROM programs"
            " WHERE brand_id = ? ORDER BY version DESC LIMIT 1",
            (brand_id,),
        )
        return program_from_row(rows[0] if rows else None)

    async def current_program(self, brand_id: str) -> Program | None:
        async with self._read() as conn:
            return await self._program(conn, brand_id)

    async def list_brands(self) -> list[BrandRecord]:
        async with self._read() as conn:
            rows = await _q(conn, "SELECT brand_id, name, created_at FROM brands ORDER BY brand_id")
        return [BrandRecord(*r) for r in rows]

    async def list_stores(self) -> list[StoreRecord]:
        async with self._read() as conn:
            stores = await _q(
                conn, "SELECT store_id, brand_id, last_seq, last_hash, created_at FROM stores ORDER BY store_id"
            )
            keys = await _q(conn, "SELECT store_id, key_id FROM store_keys ORDER BY created_at, key_id")
        return stores_from_rows(stores, keys)

    async def list_conflicts(self, store_id: str | None = None) -> list[ConflictRecord]:
        where, params = ("WHERE store_id = ?", (store_id,)) if store_id is not None else ("", ())
        async with self._read() as conn:
            rows = await _q(conn, f"SELECT {_CONFLICT_COLS} FROM conflicts {where} ORDER BY id", params)
        return [ConflictRecord(*r) for r in rows]

    async def audit_balances(self) -> list[BalanceMismatch]:
        async with self._read() as conn:
            rows = await _q(
                conn,
                "SELECT c.customer_id, c.balance, COALESCE(e.total, 0) FROM customers c"
                " LEFT JOIN (SELECT customer_id, SUM(points) AS total FROM ledger_entries"
                " GROUP BY customer_id) e ON e.customer_id = c.customer_id"
                " WHERE c.balance != COALESCE(e.total, 0) ORDER BY c.customer_id",
            )
        return [BalanceMismatch(*r) for r in rows]

    async def applied_migrations(self) -> list[tuple[str, int]]:
        async with self._read() as conn:
            rows = await _q(conn, "SELECT name, applied_at FROM migrations ORDER BY name")
        return [(r[0], r[1]) for r in rows]

    # ---- administration

    @staticmethod
    async def _brand_exists(conn: aiosqlite.Connection, brand_id: str) -> None:
        if not await _q(conn, "SELECT 1 FROM brands WHERE brand_id = ?", (brand_id,)):
            raise NotFound(f"no brand {brand_id!r}", field="brand_id")

    async def add_brand(self, brand_id: str, name: str, now: int) -> BrandRecord:
        checks.check_id("brand_id", brand_id)
        checks.check_name(name)
        async with self._write() as conn:
            if await _q(conn, "SELECT 1 FROM brands WHERE brand_id = ?", (brand_id,)):
                raise AlreadyExists(f"brand {brand_id!r} already exists", field="brand_id")
            await _q(conn, "INSERT INTO brands (brand_id, name, created_at) VALUES (?, ?, ?)", (brand_id, name, now))
        return BrandRecord(brand_id, name, now)

    async def set_program(
        self, brand_id: str, name: str, points_per_unit: int, unit_amount: int, now: int, settings: str = "{}"
    ) -> Program:
        settings = checks.check_program(brand_id, 1, name, points_per_unit, unit_amount, settings).settings
        async with self._write() as conn:
            await self._brand_exists(conn, brand_id)
            rows = await _q(conn, "SELECT COALESCE(MAX(version), 0) FROM programs WHERE brand_id = ?", (brand_id,))
            program = checks.check_program(brand_id, rows[0][0] + 1, name, points_per_unit, unit_amount, settings)
            await _q(
                conn,
                "INSERT INTO programs (brand_id, version, name, points_per_unit, unit_amount, settings, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (brand_id, program.version, name, points_per_unit, unit_amount, settings, now),
            )
        return program

    @staticmethod
    async def _insert_key(
        conn: aiosqlite.Connection, store_id: str, brand_id: str, public_key: bytes, now: int
    ) -> KeyRecord:
        key_id = checks.check_public_key(public_key)
        if await _q(conn, "SELECT 1 FROM store_keys WHERE key_id = ? OR public_key = ?", (key_id, public_key)):
            raise AlreadyExists(f"key {key_id} is already registered", field="public_key")
        await _q(
            conn,
            "INSERT INTO store_keys (key_id, store_id, public_key, created_at) VALUES (?, ?, ?, ?)",
            (key_id, store_id, public_key, now),
        )
        return KeyRecord(key_id, store_id, brand_id, public_key, now, None)

    async def add_store(self, store_id: str, brand_id: str, public_key: bytes, now: int) -> KeyRecord:
        checks.check_id("store_id", store_id)
        checks.check_public_key(public_key)
        async with self._write() as conn:
            await self._brand_exists(conn, brand_id)
            if await _q(conn, "SELECT 1 FROM stores WHERE store_id = ?", (store_id,)):
                raise AlreadyExists(f"store {store_id!r} already exists", field="store_id")
            await _q(
                conn,
                "INSERT INTO stores (store_id, brand_id, last_seq, last_hash, created_at) VALUES (?, ?, 0, ?, ?)",
                (store_id, brand_id, GENESIS_HASH, now),
            )
            return await self._insert_key(conn, store_id, brand_id, public_key, now)

    async def add_store_key(self, store_id: str, public_key: bytes, now: int) -> KeyRecord:
        checks.check_public_key(public_key)
        async with self._write() as conn:
            rows = await _q(conn, "SELECT brand_id FROM stores WHERE store_id = ?", (store_id,))
            if not rows:
                raise NotFound(f"no store {store_id!r}", field="store_id")
            return await self._insert_key(conn, store_id, rows[0][0], public_key, now)

    async def revoke_key(self, key_id: str, now: int) -> KeyRecord:
        async with self._write() as conn:
            await _q(
                conn, "UPDATE store_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL", (now, key_id)
            )
            rows = await _q(conn, f"{_KEY_SELECT} WHERE k.key_id = ?", (key_id,))
            if not rows:
                raise NotFound(f"no key {key_id!r}", field="key_id")
        return key_from_row(rows[0])
