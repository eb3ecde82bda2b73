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

from protocol import Program

from . import claims_store
from .claims_model import ClaimRows, ClaimState
from .csv_store import SqlCsv
from .engagement_store import SqlEngagement, insert_consents, insert_messages
from .errors import StoreError, WriterBusy
from .ledger import (
    CLAIM_SELECT,
    CONFLICT_COLUMNS,
    CUSTOMER_COLUMNS,
    MISMATCH_COLUMNS,
    SHORTFALL_COLUMNS,
    SqlLedger,
    programs_by_version,
)
from .merges import Collision, find_collisions, load_customers
from .migrations import pending
from .model import (
    BatchCommit,
    BatchOutcome,
    ChainHead,
    Claim,
    LedgerState,
    OpRecord,
    astuple,
    claims_from_rows,
    sale_from_row,
)
from .sql import SQLITE, Row, Session, to_sqlite
from .sqlite_checkpoint import WAL_SIZE_LIMIT, WRITER_CHECKPOINT_PAGES, Checkpointer
from .sqlite_schema import MIGRATIONS, MIGRATIONS_TABLE
from .store_keys_store import SqlStoreKeys

log = logging.getLogger(__name__)


#: The writer's page cache, in KiB.
WRITER_CACHE_KIB = 256 * 1024

_SALE_COLS = (
    "store_id, sale_id, customer_id, earned, redeemed, voided_by, voided_at, basis, returned, earn_reversed,"
    " redeem_returned"
)
_OP_COLS = (
    "op_id, digest, store_id, seq, kind, terminal_id, customer_id, status, code, points,"
    " program_version, note, at, created_at"
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



class _SQLiteSession:
    """``sql.Session`` on an aiosqlite connection (``$n`` becomes ``?n``)."""

    dialect = SQLITE

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return await _q(self._conn, to_sqlite(sql), args)

    async def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await _many(self._conn, to_sqlite(sql), rows)


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

    async def claim_batches(self, limit: int) -> list[Claim]:
        # The writer lock is the claim: no other transaction runs until this one ends.
        return claims_from_rows(await _q(self._conn, to_sqlite(CLAIM_SELECT), (limit,)))

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
        head = await _q(conn, "SELECT MAX(version) FROM programs WHERE brand_id = ?", (brand_id,))
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
        # With the sales' customers and the survivors of merged ones (an op may name a merged id).
        customers, merged = await load_customers(_SQLiteSession(conn), [*customer_ids, *(r[2] for r in sales)])
        return LedgerState(
            program_version=head[0][0],
            counter=0,  # versions are handed out relative to 0, then moved past the brand's counter
            customers=customers,
            sales={r[1]: sale_from_row(r) for r in sales},
            ops={r[0]: OpRecord(r[0], bytes(r[1]), *r[2:]) for r in ops},
            merged=merged,
        )

    async def find_collisions(self, brand_id: str, customer_ids: Sequence[str]) -> list[Collision]:
        return await find_collisions(_SQLiteSession(self._conn), brand_id, customer_ids)

    async def load_programs(self, brand_id: str, versions: Sequence[int]) -> dict[int, Program]:
        return await programs_by_version(_SQLiteSession(self._conn), brand_id, versions)

    async def save_rows(self, outcome: BatchOutcome) -> None:
        conn, out = self._conn, outcome
        await _many(
            conn, f"INSERT INTO ops ({_OP_COLS}) VALUES ({_marks(_OP_COLS)})", (astuple(r) for r in out.ops)
        )
        await _many(
            conn,
            f"INSERT INTO sales ({_SALE_COLS}) VALUES ({_marks(_SALE_COLS)})"
            " ON CONFLICT (store_id, sale_id) DO UPDATE SET earned = excluded.earned,"
            " redeemed = excluded.redeemed, voided_by = excluded.voided_by, voided_at = excluded.voided_at,"
            " basis = excluded.basis, returned = excluded.returned, earn_reversed = excluded.earn_reversed,"
            " redeem_returned = excluded.redeem_returned",
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
            f"INSERT INTO conflicts ({CONFLICT_COLUMNS}) VALUES ({_marks(CONFLICT_COLUMNS)})",
            (astuple(c) for c in out.conflicts),
        )
        await _many(
            conn,
            f"INSERT INTO mismatches ({MISMATCH_COLUMNS}) VALUES ({_marks(MISMATCH_COLUMNS)})",
            (astuple(m) for m in out.mismatches),
        )
        await _many(
            conn,
            f"INSERT INTO shortfalls ({SHORTFALL_COLUMNS}) VALUES ({_marks(SHORTFALL_COLUMNS)})",
            (astuple(s) for s in out.shortfalls),
        )

    async def load_claims(self, store_id: str, customer_ids: Sequence[str], sale_ids: Sequence[str]) -> ClaimState:
        return await claims_store.load_claims(_SQLiteSession(self._conn), store_id, customer_ids, sale_ids)

    async def save_claims(self, brand_id: str, rows: ClaimRows) -> None:
        await claims_store.save_claims(_SQLiteSession(self._conn), brand_id, rows)

    async def take_versions(self, brand_id: str, count: int) -> int:
        rows = await _q(
            self._conn,
            "UPDATE brand_counters SET value = value + ?1 WHERE brand_id = ?2 RETURNING value - ?1",
            (count, brand_id),
        )
        if not rows:
            raise StoreError(f"brand {brand_id} has no change counter")
        return int(rows[0][0])

    async def save_batch(self, commit: BatchCommit) -> None:
        conn, out, same = self._conn, commit.outcome, commit.balance_only
        # SQLite rewrites the entries of every index whose columns an UPDATE sets, changed or not:
        # a balance change sets no profile column, so only the row and the version index move.
        await _many(
            conn,
            "UPDATE customers SET balance = ?, version = ?, updated_at = ? WHERE customer_id = ?",
            ((c.balance, c.version, c.updated_at, c.customer_id) for c in out.customers if c.customer_id in same),
        )
        await _many(
            conn,
            f"INSERT INTO customers ({CUSTOMER_COLUMNS}) VALUES ({_marks(CUSTOMER_COLUMNS)})"
            " ON CONFLICT (customer_id) DO UPDATE SET name = excluded.name, phone = excluded.phone,"
            " email = excluded.email, card_code = excluded.card_code, balance = excluded.balance,"
            " version = excluded.version, updated_at = excluded.updated_at, groups = excluded.groups,"
            " opted_out = excluded.opted_out",
            (astuple(c) for c in out.customers if c.customer_id not in same),
        )
        await insert_messages(_SQLiteSession(conn), commit.messages)
        await insert_consents(_SQLiteSession(conn), commit.consents)
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
        await _q(conn, "DELETE FROM inbox WHERE store_id = ? AND seq = ?", (commit.store_id, commit.seq))


class SQLiteStorage(SqlCsv, SqlStoreKeys, SqlEngagement, SqlLedger):
    """The SQLite ledger at ``path`` (created and migrated by ``open``)."""

    single_writer = True

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()
        self._checkpointer = Checkpointer(self.path)

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
                # Deleted and rewritten content is overwritten with zeros, not left in free space:
                # an erasure must not linger in the file (cloud.erasure).
                await _q(conn, "PRAGMA secure_delete = ON")
                # A chain's ledger is hundreds of MB; a batch touches random customers and index pages.
                # The default 2 MB cache read them back from the OS on every batch: 256 MB (taken only as
                # pages are used) made the apply 14 % faster with 100,000 customers.
                await _q(conn, f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
                # The checkpointer copies the WAL into the file; the writer only past this bound.
                await _q(conn, f"PRAGMA wal_autocheckpoint = {WRITER_CHECKPOINT_PAGES}")
                await _q(conn, f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
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
        await self._checkpointer.close()
        for conn in (self._reader, self._writer):
            if conn is not None:
                try:
                    await conn.close()
                except sqlite3.Error:
                    log.exception("closing %s failed", self.path)
        self._reader = self._writer = None

    async def _migrate(self, now: int) -> None:
        async with self._write_conn() as conn:
            await _q(conn, MIGRATIONS_TABLE)
            applied = [r[0] for r in await _q(conn, "SELECT name FROM migrations")]
            for migration in pending(applied, MIGRATIONS):
                for statement in migration.statements:
                    await _q(conn, statement)
                await _q(conn, "INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (migration.name, now))
                log.info("applied migration %s to %s", migration.name, self.path)

    # ---- transactions

    async def reclaim(self, tables: Sequence[str]) -> None:
        """Copy the WAL into the file and truncate it, so its frames (old page images, erased
        values among them) leave the disk's live files; waits for readers like a writer does."""
        conn = self._writer
        if conn is None:
            raise StoreError("storage is not open")
        async with self._write_lock, self._checkpointer.running:
            busy, _, _ = (await _q(conn, "PRAGMA wal_checkpoint(TRUNCATE)"))[0]
        if busy:
            log.warning("the WAL checkpoint after an erasure was blocked by a reader; the next one completes it")

    @asynccontextmanager
    async def _write_conn(self) -> AsyncIterator[aiosqlite.Connection]:
        conn = self._writer
        if conn is None:
            raise StoreError("storage is not open")
        async with self._write_lock:
            try:
                await conn.execute_fetchall("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                    raise StoreError(f"SQLite failed: {exc}") from exc
                raise WriterBusy(f"{self.path} stayed locked by another writer: {exc}") from exc
            try:
                yield conn
                await _q(conn, "COMMIT")
                self._checkpointer.committed()
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
    async def _write(self) -> AsyncIterator[Session]:
        async with self._write_conn() as conn:
            yield _SQLiteSession(conn)

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[Session]:
        """One snapshot: statements inside see the same committed state."""
        conn = self._reader
        if conn is None:
            raise StoreError("storage is not open")
        async with self._read_lock:
            await _q(conn, "BEGIN")
            try:
                yield _SQLiteSession(conn)
            finally:
                await self._rollback(conn)

    @asynccontextmanager
    async def batch_tx(self) -> AsyncIterator[_SQLiteTx]:
        async with self._write_conn() as conn:
            yield _SQLiteTx(conn)
