"""PostgreSQL implementation of ``Storage`` (asyncpg, a connection pool).

Concurrency: row locks, not SERIALIZABLE. A batch is applied in one READ
COMMITTED transaction that takes its locks in one fixed order, so two
transactions can wait for each other but never deadlock:

1. ``stores`` row of the batch's store, taken when the batch is claimed
   (``FOR NO KEY UPDATE ... SKIP LOCKED``): one batch per store at a time,
   whichever worker or process holds it, and another worker passes over the
   store instead of waiting; the chain head is read under that lock. NO KEY,
   so receiving the store's next batch (an inbox row whose foreign key names
   the store) never waits for it;
2. every ``customers`` row the batch names, sorted by customer_id
   (``ORDER BY customer_id FOR UPDATE``): the balance a debit is checked
   against is the latest committed one and cannot change until this
   transaction commits, so two workers can never spend the same points;
3. the ``brand_counters`` row of the store's brand, last (``take_versions``:
   an UPDATE, after the batch is decided and its ops, sales, entries and
   conflicts are written), held to commit: the versions a batch hands out are
   committed in counter order, so a pull whose cursor moves to the brand's
   counter can never skip a version committed later. Brands never wait for
   each other's counters, and a brand's batches wait for each other only for
   the customers' update and the commit.

Receiving a batch is a transaction of its own that locks the store's
``store_sync`` row only (the head of the chain as received).

A customer the batch creates has no row to lock: it is a plain INSERT, so if
another store's batch created the same id meanwhile, the unique key fails
this transaction (``StoreError``; the batch stays in the inbox, the worker
tries it again and it then gets ``customer_exists``) instead of overwriting
that customer.

Everything a batch reads is loaded with ``= ANY($1::text[])`` (one parameter
however many ids); ops, ledger entries, conflicts, mismatches and shortfalls
are appended with one binary COPY each, sales and customers written with one
``INSERT ... SELECT FROM unnest($1::t[], ...)`` (or UPDATE) each: a constant
number of round trips per batch, never one statement per op. asyncpg and socket
errors become ``StoreError`` (``raise ... from``) at this boundary.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg

from protocol import Program

from . import claims_store
from .claims_model import ClaimRows, ClaimState
from .csv_store import SqlCsv
from .engagement_store import SqlEngagement, insert_consents, insert_messages
from .errors import StoreError
from .ledger import CLAIM_SELECT, SqlLedger, programs_by_version
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
from .pg_schema import (
    CONFLICT,
    ENTRY,
    INSERT_CUSTOMERS,
    MIGRATION_LOCK,
    MIGRATIONS,
    MIGRATIONS_TABLE,
    MISMATCH,
    OP,
    SALE,
    SHORTFALL,
    UPDATE_BALANCES,
    UPDATE_CUSTOMERS,
    UPSERT_SALES,
    Columns,
    names,
)
from .sql import POSTGRES, Row, Session
from .store_keys_store import SqlStoreKeys

log = logging.getLogger(__name__)


_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

def safe_dsn(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "postgresql://?"
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


def _settings(dsn: str) -> dict[str, str]:
    """Session settings for the pool, unless the DSN sets them itself.

    ``plan_cache_mode = force_custom_plan``: asyncpg prepares every statement, and after five
    runs PostgreSQL may keep one generic plan per connection. Planned while a table was small (a
    new ledger's ops or sales), it stays a sequential scan as the table grows: measured, the
    batch's op lookup went from 4 to 280 us per op and the apply from 3,465 to 747 ops/s.
    Planning each run costs a fraction of a millisecond per statement, a few per batch."""
    try:
        given = parse_qs(urlsplit(dsn).query)
    except ValueError:
        given = {}
    return {} if "plan_cache_mode" in given else {"plan_cache_mode": "force_custom_plan"}


def _error(exc: BaseException) -> StoreError:
    return StoreError(f"PostgreSQL failed: {type(exc).__name__}: {exc}")


async def _fetch(conn: asyncpg.Connection, sql: str, *args: Any) -> list[Row]:
    try:
        rows = await conn.fetch(sql, *args)
    except _DB_ERRORS as exc:
        raise _error(exc) from exc
    return [tuple(r) for r in rows]


async def _many(conn: asyncpg.Connection, sql: str, records: Sequence[Any]) -> list[Row]:
    """Write ``records`` (dataclasses in column order) with one unnest statement."""
    if not records:
        return []
    columns = [list(col) for col in zip(*(astuple(r) for r in records), strict=True)]
    return await _fetch(conn, sql, *columns)



async def _copy(conn: asyncpg.Connection, table: str, cols: Columns, records: Sequence[Any]) -> None:
    """Append ``records`` (dataclasses in column order) to ``table`` with one binary COPY, in order."""
    if not records:
        return
    try:
        await conn.copy_records_to_table(table, records=[astuple(r) for r in records], columns=[c for c, _ in cols])
    except _DB_ERRORS as exc:
        raise _error(exc) from exc


class _PgSession:
    """``sql.Session`` on an asyncpg connection."""

    dialect = POSTGRES

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return await _fetch(self._conn, sql, *args)

    async def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        try:
            await self._conn.executemany(sql, rows)
        except _DB_ERRORS as exc:
            raise _error(exc) from exc


class _PgTx:
    """The ``LedgerTx`` of one open write transaction (see the lock order above)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self._locked: set[str] = set()  # customers loaded (and locked) by load_state

    async def chain_head(self, store_id: str) -> ChainHead | None:
        rows = await _fetch(
            self._conn,
            "SELECT store_id, brand_id, last_seq, last_hash FROM stores WHERE store_id = $1 FOR NO KEY UPDATE",
            store_id,
        )
        return ChainHead(rows[0][0], rows[0][1], rows[0][2], bytes(rows[0][3])) if rows else None

    async def claim_batches(self, limit: int) -> list[Claim]:
        # NO KEY: a batch being received for this store (its inbox row's foreign key) does not wait.
        return claims_from_rows(await _fetch(self._conn, CLAIM_SELECT + " FOR NO KEY UPDATE OF s SKIP LOCKED", limit))

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
        # Sales first (this store's: its row lock keeps them), so their customers are locked with the
        # ops' and the survivors of merged ones, all in one customer_id order (ORDER BY comes before
        # the locking clause).
        sales = await _fetch(
            conn,
            f"SELECT {names(SALE)} FROM sales WHERE store_id = $1 AND sale_id = ANY($2::text[])",
            store_id,
            sorted(set(sale_ids)),
        )
        customers, merged = await load_customers(_PgSession(conn), [*customer_ids, *(r[2] for r in sales)])
        self._locked = set(customers)
        program = await _fetch(conn, "SELECT MAX(version) FROM programs WHERE brand_id = $1", brand_id)
        ops = await _fetch(
            conn, f"SELECT {names(OP)} FROM ops WHERE op_id = ANY($1::text[])", sorted(set(op_ids))
        )
        return LedgerState(
            program_version=program[0][0],
            counter=0,  # versions are handed out relative to 0, then moved past the brand's counter
            customers=customers,
            sales={r[1]: sale_from_row(r) for r in sales},
            ops={r[0]: OpRecord(r[0], bytes(r[1]), *r[2:]) for r in ops},
            merged=merged,
        )

    async def find_collisions(self, brand_id: str, customer_ids: Sequence[str]) -> list[Collision]:
        return await find_collisions(_PgSession(self._conn), brand_id, customer_ids)

    async def load_programs(self, brand_id: str, versions: Sequence[int]) -> dict[int, Program]:
        return await programs_by_version(_PgSession(self._conn), brand_id, versions)

    async def save_rows(self, outcome: BatchOutcome) -> None:
        conn = self._conn
        await _copy(conn, "ops", OP, outcome.ops)
        await _many(conn, UPSERT_SALES, outcome.sales)
        await _copy(conn, "ledger_entries", ENTRY, outcome.entries)
        await _copy(conn, "conflicts", CONFLICT, outcome.conflicts)
        await _copy(conn, "mismatches", MISMATCH, outcome.mismatches)
        await _copy(conn, "shortfalls", SHORTFALL, outcome.shortfalls)

    async def load_claims(self, store_id: str, customer_ids: Sequence[str], sale_ids: Sequence[str]) -> ClaimState:
        return await claims_store.load_claims(_PgSession(self._conn), store_id, customer_ids, sale_ids)

    async def save_claims(self, brand_id: str, rows: ClaimRows) -> None:
        await claims_store.save_claims(_PgSession(self._conn), brand_id, rows)

    async def take_versions(self, brand_id: str, count: int) -> int:
        rows = await _fetch(
            self._conn,
            "UPDATE brand_counters SET value = value + $1 WHERE brand_id = $2 RETURNING value - $1",
            count, brand_id,
        )
        if not rows:
            raise StoreError(f"brand {brand_id} has no change counter")
        return int(rows[0][0])

    async def save_batch(self, commit: BatchCommit) -> None:
        conn, out = self._conn, commit.outcome
        await _many(conn, INSERT_CUSTOMERS, [c for c in out.customers if c.customer_id not in self._locked])
        changed = [c for c in out.customers if c.customer_id in self._locked]
        same = [c for c in changed if c.customer_id in commit.balance_only]
        updated = await _fetch(conn, UPDATE_BALANCES, [c.customer_id for c in same], [c.balance for c in same],
                               [c.version for c in same], [c.updated_at for c in same]) if same else []
        updated += await _many(conn, UPDATE_CUSTOMERS, [c for c in changed if c.customer_id not in commit.balance_only])
        if len(updated) != len(changed):  # impossible while the rows are locked
            raise StoreError(f"{len(changed) - len(updated)} locked customers vanished during the batch")
        await insert_messages(_PgSession(conn), commit.messages)
        await insert_consents(_PgSession(conn), commit.consents)
        await _fetch(
            conn,
            "INSERT INTO batches (store_id, seq, hash, body, ack, at, received_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            commit.store_id, commit.seq, commit.hash, commit.body, commit.ack, commit.at, commit.received_at,
        )
        moved = await _fetch(
            conn,
            "UPDATE stores SET last_seq = $1, last_hash = $2 WHERE store_id = $3 AND last_seq = $4"
            " RETURNING store_id",
            commit.seq, commit.hash, commit.store_id, commit.prev_seq,
        )
        if len(moved) != 1:  # impossible under the store row lock; never write past a moved head
            raise StoreError(f"store {commit.store_id} head moved during batch {commit.seq}")
        await _fetch(conn, "DELETE FROM inbox WHERE store_id = $1 AND seq = $2", commit.store_id, commit.seq)


class PgStorage(SqlCsv, SqlStoreKeys, SqlEngagement, SqlLedger):
    """The PostgreSQL ledger at ``dsn`` (its tables are created and migrated by ``open``).

    The schema is the DSN's search path (``?search_path=...``; asyncpg sends
    unknown DSN parameters as server settings). ``on_query`` sees the text of
    every statement sent, for diagnostics and tests.
    """

    single_writer = False

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 8,
        timeout: float = 10.0,
        on_query: Callable[[str], None] | None = None,
    ) -> None:
        self.dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._timeout = timeout
        self._on_query = on_query
        self._pool: asyncpg.Pool | None = None

    def __repr__(self) -> str:
        return f"PgStorage({safe_dsn(self.dsn)!r})"

    # ---- lifecycle

    async def _init_conn(self, conn: asyncpg.Connection) -> None:
        callback = self._on_query
        if callback is not None:
            conn.add_query_logger(lambda logged: callback(logged.query))

    async def open(self, now: int) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                timeout=self._timeout,
                command_timeout=60,
                init=self._init_conn,
                server_settings=_settings(self.dsn),
            )
        except (*_DB_ERRORS, ValueError) as exc:  # ValueError: a DSN asyncpg cannot parse
            raise StoreError(f"cannot open {safe_dsn(self.dsn)}: {type(exc).__name__}: {exc}") from exc
        try:
            await self._migrate(now)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await pool.close()
            except _DB_ERRORS:
                log.exception("closing %s failed", safe_dsn(self.dsn))

    async def _migrate(self, now: int) -> None:
        async with self._conn(readonly=False) as conn:
            # Two processes opening a fresh database at once: the second waits, then finds nothing to do.
            await _fetch(conn, "SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await _fetch(conn, MIGRATIONS_TABLE)
            applied = [r[0] for r in await _fetch(conn, "SELECT name FROM migrations")]
            for migration in pending(applied, MIGRATIONS):
                for statement in migration.statements:
                    await _fetch(conn, statement)
                await _fetch(
                    conn, "INSERT INTO migrations (name, applied_at) VALUES ($1, $2)", migration.name, now
                )
                log.info("applied migration %s to %s", migration.name, safe_dsn(self.dsn))

    # ---- transactions

    async def reclaim(self, tables: Sequence[str]) -> None:
        """VACUUM the tables an erasure touched (never inside a transaction): their dead tuples,
        erased values among them, become free space that new rows overwrite. It reads only the
        pages changed since the last vacuum (the visibility map), so it is cheap; a failure is
        logged, not raised: autovacuum does the same later."""
        pool = self._pool
        if pool is None:
            raise StoreError("storage is not open")
        try:
            async with pool.acquire() as conn:
                await conn.execute("VACUUM " + ", ".join(tables))
        except _DB_ERRORS:
            log.exception("VACUUM after an erasure failed; autovacuum will reclaim the space")

    @asynccontextmanager
    async def _conn(self, *, readonly: bool) -> AsyncIterator[asyncpg.Connection]:
        pool = self._pool
        if pool is None:
            raise StoreError("storage is not open")
        try:
            conn = await pool.acquire()
        except _DB_ERRORS as exc:
            raise _error(exc) from exc
        try:
            tx = conn.transaction(isolation="repeatable_read" if readonly else "read_committed", readonly=readonly)
            try:
                await tx.start()
            except _DB_ERRORS as exc:
                raise _error(exc) from exc
            try:
                yield conn
            except BaseException:
                try:
                    await tx.rollback()
                except _DB_ERRORS:
                    log.exception("rollback failed on %s", safe_dsn(self.dsn))
                raise
            try:
                await tx.commit()
            except _DB_ERRORS as exc:
                raise _error(exc) from exc
        finally:
            try:
                await pool.release(conn)
            except _DB_ERRORS:
                log.exception("releasing a connection to %s failed", safe_dsn(self.dsn))

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[Session]:
        async with self._conn(readonly=False) as conn:
            yield _PgSession(conn)

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[Session]:
        """One snapshot (REPEATABLE READ, read only): statements inside see the same committed state."""
        async with self._conn(readonly=True) as conn:
            yield _PgSession(conn)

    @asynccontextmanager
    async def batch_tx(self) -> AsyncIterator[_PgTx]:
        async with self._conn(readonly=False) as conn:
            yield _PgTx(conn)
