"""The ``Storage`` methods both backends share: reads and administration.

Written once against ``sql.Session``; a backend supplies its transactions
(``_read``: one consistent snapshot; ``_write``: one write transaction, the
single writer on SQLite, READ COMMITTED with row locks on PostgreSQL) and its
batch path. Every check raises before a row is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager

from protocol import GENESIS_HASH, LocalProtocolError, Program
from protocol.expiry import ExpiryMode
from protocol.validate import MAX_POINTS, check_range, check_text

from . import balances, checks, claims_store
from .claims_model import PortalClaim
from .erasure import ErasureLedger
from .errors import AlreadyExists, ConfigError, NotFound, StoreError
from .ledger_periodic import PeriodicLedger
from .ledger_reports import ReportLedger
from .merges import MergeLedger
from .model import (
    CUSTOMER_COLUMNS,
    AdjustmentRecord,
    BalanceMismatch,
    BrandRecord,
    Claim,
    ConflictRecord,
    DownlinkPage,
    ExpirySummary,
    InboxBatch,
    KeyRecord,
    MismatchRecord,
    OperatorRecord,
    Receipt,
    Received,
    ShortfallRecord,
    StoreRecord,
    StoreSync,
    claims_from_rows,
    customer_from_row,
    key_from_row,
    program_from_row,
    stores_from_rows,
)
from .sql import Session, one

__all__ = ["CONFLICT_COLUMNS", "CUSTOMER_COLUMNS", "MISMATCH_COLUMNS", "SHORTFALL_COLUMNS", "SqlLedger",
           "programs_by_version"]

CONFLICT_COLUMNS = (
    "store_id, terminal_id, customer_id, op_id, kind, points_requested, balance_available, at, created_at"
)
MISMATCH_COLUMNS = (
    "store_id, op_id, customer_id, sale_id, kind, program_version, edge_points, cloud_points, reason, at, created_at"
)
SHORTFALL_COLUMNS = "store_id, op_id, customer_id, sale_id, kind, policy, points, balance_after, at, created_at"
#: Customers an expiry transaction locks at once: short waits for the batches behind it.
EXPIRY_CHUNK = 200
KEY_SELECT = (
    "SELECT k.key_id, k.store_id, s.brand_id, k.public_key, k.created_at, k.revoked_at, k.expires_at,"
    " k.replaced_by, s.revoked_at, s.revoke_reason FROM store_keys k JOIN stores s ON s.store_id = k.store_id"
)
_OPERATOR_SELECT = "SELECT operator_id, name, brand_id, created_at, revoked_at FROM operators"
#: The oldest $1 inbox batches among the next $1 of each store's chain, with their store's applied
#: head (``model.claims_from_rows`` keeps those that follow on). A backend adds its row lock
#: (PostgreSQL: skip stores another reconciler holds).
CLAIM_SELECT = (
    "SELECT s.store_id, s.brand_id, s.last_seq, s.last_hash, i.seq, i.hash, i.body, i.at, i.received_at"
    " FROM inbox i JOIN stores s ON s.store_id = i.store_id AND i.seq > s.last_seq AND i.seq <= s.last_seq + $1"
    " ORDER BY i.received_at, i.store_id, i.seq LIMIT $1"
)
#: A store's last pull is written at most this often (pulls are reads; the time is only for alerts).
PULL_NOTE_MS = 60_000
_PROGRAM_SELECT = (
    "SELECT brand_id, version, name, points_per_unit, unit_amount, settings FROM programs"
    " WHERE brand_id = $1 ORDER BY version DESC LIMIT 1"
)


async def programs_by_version(q: Session, brand_id: str, versions: Sequence[int]) -> dict[int, Program]:
    """The brand's program at each of ``versions`` that exists (versions are never rewritten)."""
    wanted = sorted(set(versions))
    if not wanted:
        return {}
    rows = await q.fetch(
        "SELECT brand_id, version, name, points_per_unit, unit_amount, settings FROM programs"
        f" WHERE brand_id = $1 AND {q.dialect.any_int('version', 2)}",
        brand_id, q.dialect.ints(wanted),
    )
    return {r[1]: Program(*r) for r in rows}


async def insert_store(q: Session, store_id: str, brand_id: str, now: int) -> None:
    """A new store's rows: its applied chain head and its received one (empty), in ``q``'s transaction."""
    await q.fetch(
        "INSERT INTO stores (store_id, brand_id, last_seq, last_hash, created_at) VALUES ($1, $2, 0, $3, $4)",
        store_id, brand_id, GENESIS_HASH, now,
    )
    await q.fetch(
        "INSERT INTO store_sync (store_id, received_seq, received_hash) VALUES ($1, 0, $2)", store_id, GENESIS_HASH
    )


def _check_adjustment(points: int, reason: str, actor: str) -> None:
    try:
        check_range("points", points, -MAX_POINTS, MAX_POINTS)
        if points == 0:
            raise LocalProtocolError("points must not be zero", code="out_of_range", field="points")
        check_text("reason", reason, 500, required=True)
        check_text("actor", actor, 100, required=True)
    except LocalProtocolError as exc:
        raise ConfigError(exc.message, field=exc.field, code=exc.code) from exc


class SqlLedger(PeriodicLedger, ReportLedger, ErasureLedger, MergeLedger):
    """Shared half of ``SQLiteStorage`` and ``PgStorage`` (with the periodic job's and the reports' methods)."""

    def _read(self) -> AbstractAsyncContextManager[Session]:
        raise NotImplementedError

    def _write(self) -> AbstractAsyncContextManager[Session]:
        raise NotImplementedError

    async def ping(self) -> None:
        async with self._read() as q:
            await q.fetch("SELECT 1")

    # ---- reads

    async def find_key(self, key_id: str) -> KeyRecord | None:
        async with self._read() as q:
            rows = await q.fetch(f"{KEY_SELECT} WHERE k.key_id = $1", key_id)
        return key_from_row(rows[0]) if rows else None

    async def downlink_page(self, brand_id: str, cursor: int, limit: int) -> DownlinkPage:
        async with self._read() as q:
            rows = await q.fetch(
                f"SELECT {CUSTOMER_COLUMNS}, merged_into FROM customers WHERE brand_id = $1 AND version > $2"
                " ORDER BY version LIMIT $3",
                brand_id, cursor, limit,
            )
            counter = one(await q.fetch("SELECT value FROM brand_counters WHERE brand_id = $1", brand_id))
            program = program_from_row(one(await q.fetch(_PROGRAM_SELECT, brand_id)))
            customers = tuple(customer_from_row(r) for r in rows)
            expiring = {} if program is None else await balances.expiring_of(
                q, [c.customer_id for c in customers], program.options.expiry
            )
            cards = await claims_store.card_tokens(q, [c.customer_id for c in customers])
        merged = {r[0]: r[14] for r in rows if r[14] is not None}
        return DownlinkPage(customers, 0 if counter is None else counter[0], program, expiring, cards, merged)

    async def current_program(self, brand_id: str) -> Program | None:
        async with self._read() as q:
            return program_from_row(one(await q.fetch(_PROGRAM_SELECT, brand_id)))

    async def list_brands(self) -> list[BrandRecord]:
        async with self._read() as q:
            rows = await q.fetch("SELECT brand_id, name, created_at FROM brands ORDER BY brand_id")
        return [BrandRecord(*r) for r in rows]

    async def list_stores(self) -> list[StoreRecord]:
        async with self._read() as q:
            stores = await q.fetch(
                "SELECT store_id, brand_id, last_seq, last_hash, created_at, revoked_at, revoke_reason FROM stores"
                " ORDER BY store_id"
            )
            keys = await q.fetch("SELECT store_id, key_id FROM store_keys ORDER BY created_at, key_id")
        return stores_from_rows(stores, keys)

    async def list_store_sync(self, brand_id: str | None = None) -> list[StoreSync]:
        where, params = ("WHERE s.brand_id = $1", (brand_id,)) if brand_id is not None else ("", ())
        async with self._read() as q:
            rows = await q.fetch(
                "SELECT s.store_id, s.brand_id, s.created_at, s.last_seq, y.received_seq, y.last_batch_at,"
                f" y.last_pull_at FROM stores s JOIN store_sync y ON y.store_id = s.store_id {where}"
                " ORDER BY s.store_id",
                *params,
            )
        return [StoreSync(*r) for r in rows]

    async def list_conflicts(self, store_id: str | None = None) -> list[ConflictRecord]:
        where, params = ("WHERE store_id = $1", (store_id,)) if store_id is not None else ("", ())
        async with self._read() as q:
            rows = await q.fetch(f"SELECT {CONFLICT_COLUMNS} FROM conflicts {where} ORDER BY id", *params)
        return [ConflictRecord(*r) for r in rows]

    async def list_mismatches(self, store_id: str | None = None) -> list[MismatchRecord]:
        where, params = ("WHERE store_id = $1", (store_id,)) if store_id is not None else ("", ())
        async with self._read() as q:
            rows = await q.fetch(f"SELECT {MISMATCH_COLUMNS} FROM mismatches {where} ORDER BY id", *params)
        return [MismatchRecord(*r) for r in rows]

    async def list_shortfalls(self, store_id: str | None = None) -> list[ShortfallRecord]:
        where, params = ("WHERE store_id = $1", (store_id,)) if store_id is not None else ("", ())
        async with self._read() as q:
            rows = await q.fetch(f"SELECT {SHORTFALL_COLUMNS} FROM shortfalls {where} ORDER BY id", *params)
        return [ShortfallRecord(*r) for r in rows]

    async def audit_balances(self) -> list[BalanceMismatch]:
        async with self._read() as q:
            rows = await q.fetch(
                "SELECT c.customer_id, c.balance, CAST(COALESCE(e.total, 0) AS BIGINT) FROM customers c"
                " LEFT JOIN (SELECT customer_id, SUM(points) AS total FROM ledger_entries"
                " GROUP BY customer_id) e ON e.customer_id = c.customer_id"
                " WHERE c.balance != COALESCE(e.total, 0) ORDER BY c.customer_id",
            )
        return [BalanceMismatch(*r) for r in rows]

    async def applied_migrations(self) -> list[tuple[str, int]]:
        async with self._read() as q:
            rows = await q.fetch("SELECT name, applied_at FROM migrations ORDER BY name")
        return [(r[0], r[1]) for r in rows]

    # ---- receiving batches (applying them is the backends' batch path)

    async def receive_batch(self, batch: InboxBatch) -> Received:
        """Store a verified batch in the inbox if it is the next of its store's received chain.

        The store's ``store_sync`` row is locked, so two copies of one batch
        arriving at once are decided one after the other. Nothing is written
        unless the batch is queued.
        """
        async with self._write() as q:
            head = one(await q.fetch(
                f"SELECT received_seq, received_hash FROM store_sync WHERE store_id = $1{q.dialect.for_update}",
                batch.store_id,
            ))
            if head is None:
                raise StoreError(f"store {batch.store_id} has a key but no sync row")
            received_seq, received_hash = head[0], bytes(head[1])
            expected = received_seq + 1
            if batch.seq <= received_seq:
                # One statement, one snapshot: a batch moving from the inbox to batches is seen once.
                found = one(await q.fetch(
                    "SELECT hash, ack FROM batches WHERE store_id = $1 AND seq = $2"
                    " UNION ALL SELECT hash, NULL FROM inbox WHERE store_id = $1 AND seq = $2",
                    batch.store_id, batch.seq,
                ))
                if found is None:
                    raise StoreError(f"batch {batch.seq} of store {batch.store_id} was received but is gone")
                if bytes(found[0]) != batch.hash:
                    return Received(Receipt.CONFLICT, expected)
                if found[1] is None:
                    return Received(Receipt.PENDING, expected)
                return Received(Receipt.APPLIED, expected, bytes(found[1]))
            if batch.seq > expected:
                return Received(Receipt.GAP, expected)
            if batch.prev_hash != received_hash:
                return Received(Receipt.CHAIN_BROKEN, expected)
            await q.fetch(
                "INSERT INTO inbox (store_id, seq, hash, body, at, received_at) VALUES ($1, $2, $3, $4, $5, $6)",
                batch.store_id, batch.seq, batch.hash, batch.body, batch.at, batch.received_at,
            )
            await q.fetch(
                "UPDATE store_sync SET received_seq = $1, received_hash = $2, last_batch_at = $3 WHERE store_id = $4",
                batch.seq, batch.hash, batch.received_at, batch.store_id,
            )
        return Received(Receipt.QUEUED, batch.seq + 1)

    async def applied_acks(self, wanted: list[tuple[str, int]]) -> dict[tuple[str, int], bytes]:
        """The stored acks of those (store, seq) batches that are applied by now."""
        if not wanted:
            return {}
        async with self._read() as q:
            rows = await q.fetch(
                f"SELECT store_id, last_seq FROM stores WHERE {q.dialect.any_of('store_id', 1)}",
                q.dialect.strings(sorted({store for store, _ in wanted})),
            )
            heads: dict[str, int] = {r[0]: r[1] for r in rows}
            found: dict[tuple[str, int], bytes] = {}
            for store_id, seq in wanted:
                if heads.get(store_id, 0) >= seq:
                    row = one(await q.fetch("SELECT ack FROM batches WHERE store_id = $1 AND seq = $2", store_id, seq))
                    if row is not None:
                        found[store_id, seq] = bytes(row[0])
        return found

    async def peek_inbox(self, limit: int = 1) -> list[Claim]:
        """The batches ``claim_batches(limit)`` would take now, read without taking them (nor any lock)."""
        async with self._read() as q:
            return claims_from_rows(await q.fetch(CLAIM_SELECT, limit))

    async def inbox_depth(self) -> int:
        async with self._read() as q:
            rows = await q.fetch("SELECT COUNT(*) FROM inbox")
        return int(rows[0][0])

    async def note_pull(self, store_id: str, now: int) -> None:
        """Remember that the store pulled (at most once a minute: a pull is otherwise a read)."""
        async with self._read() as q:
            row = one(await q.fetch("SELECT last_pull_at FROM store_sync WHERE store_id = $1", store_id))
        if row is None or (row[0] is not None and now - row[0] < PULL_NOTE_MS):
            return
        async with self._write() as q:
            await q.fetch(
                "UPDATE store_sync SET last_pull_at = $1 WHERE store_id = $2"
                " AND (last_pull_at IS NULL OR last_pull_at < $3)",
                now, store_id, now - PULL_NOTE_MS + 1,
            )

    # ---- administration

    @staticmethod
    async def _brand_exists(q: Session, brand_id: str, *, lock: bool = False) -> None:
        suffix = q.dialect.for_update if lock else ""
        if not await q.fetch(f"SELECT 1 FROM brands WHERE brand_id = $1{suffix}", brand_id):
            raise NotFound(f"no brand {brand_id!r}", field="brand_id")

    async def add_brand(self, brand_id: str, name: str, now: int) -> BrandRecord:
        checks.check_id("brand_id", brand_id)
        checks.check_name(name)
        async with self._write() as q:
            if await q.fetch("SELECT 1 FROM brands WHERE brand_id = $1", brand_id):
                raise AlreadyExists(f"brand {brand_id!r} already exists", field="brand_id")
            await q.fetch("INSERT INTO brands (brand_id, name, created_at) VALUES ($1, $2, $3)", brand_id, name, now)
            await q.fetch("INSERT INTO brand_counters (brand_id, value) VALUES ($1, 0)", brand_id)
        return BrandRecord(brand_id, name, now)

    async def set_program(
        self, brand_id: str, name: str, points_per_unit: int, unit_amount: int, now: int, settings: str = "{}"
    ) -> Program:
        settings = checks.check_program(brand_id, 1, name, points_per_unit, unit_amount, settings).settings
        async with self._write() as q:
            # The brand's row lock keeps two operators from both creating the same next version.
            await self._brand_exists(q, brand_id, lock=True)
            previous = program_from_row(one(await q.fetch(_PROGRAM_SELECT, brand_id)))
            version = 1 if previous is None else previous.version + 1
            program = checks.check_program(brand_id, version, name, points_per_unit, unit_amount, settings)
            await q.fetch(
                "INSERT INTO programs (brand_id, version, name, points_per_unit, unit_amount, settings, created_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7)",
                brand_id, program.version, name, points_per_unit, unit_amount, settings, now,
            )
            before = None if previous is None else previous.options.expiry
            if before is not None and before != program.options.expiry:
                # Every customer's upcoming expiries changed with no balance change: resend them all.
                await balances.bump_brand(q, brand_id)
        return program

    @staticmethod
    async def _insert_key(q: Session, store_id: str, brand_id: str, public_key: bytes, now: int) -> KeyRecord:
        key_id = checks.check_public_key(public_key)
        if await q.fetch("SELECT 1 FROM store_keys WHERE key_id = $1 OR public_key = $2", key_id, public_key):
            raise AlreadyExists(f"key {key_id} is already registered", field="public_key")
        await q.fetch(
            "INSERT INTO store_keys (key_id, store_id, public_key, created_at) VALUES ($1, $2, $3, $4)",
            key_id, store_id, public_key, now,
        )
        return KeyRecord(key_id, store_id, brand_id, public_key, now, None)

    async def add_store(self, store_id: str, brand_id: str, public_key: bytes, now: int) -> KeyRecord:
        checks.check_id("store_id", store_id)
        checks.check_public_key(public_key)
        async with self._write() as q:
            await self._brand_exists(q, brand_id)
            if await q.fetch("SELECT 1 FROM stores WHERE store_id = $1", store_id):
                raise AlreadyExists(f"store {store_id!r} already exists", field="store_id")
            await insert_store(q, store_id, brand_id, now)
            return await self._insert_key(q, store_id, brand_id, public_key, now)

    async def add_store_key(self, store_id: str, public_key: bytes, now: int) -> KeyRecord:
        checks.check_public_key(public_key)
        async with self._write() as q:
            rows = await q.fetch("SELECT brand_id FROM stores WHERE store_id = $1", store_id)
            if not rows:
                raise NotFound(f"no store {store_id!r}", field="store_id")
            return await self._insert_key(q, store_id, rows[0][0], public_key, now)

    async def revoke_key(self, key_id: str, now: int) -> KeyRecord:
        async with self._write() as q:
            await q.fetch("UPDATE store_keys SET revoked_at = $1 WHERE key_id = $2 AND revoked_at IS NULL", now, key_id)
            rows = await q.fetch(f"{KEY_SELECT} WHERE k.key_id = $1", key_id)
            if not rows:
                raise NotFound(f"no key {key_id!r}", field="key_id")
        return key_from_row(rows[0])

    # ---- operators of the admin API

    async def add_operator(self, operator_id: str, name: str, brand_id: str | None, token_hash: bytes,
                           now: int) -> OperatorRecord:
        checks.check_name(name)
        async with self._write() as q:
            if brand_id is not None:
                await self._brand_exists(q, brand_id)
            await q.fetch(
                "INSERT INTO operators (operator_id, name, brand_id, token_hash, created_at)"
                " VALUES ($1, $2, $3, $4, $5)",
                operator_id, name, brand_id, token_hash, now,
            )
        return OperatorRecord(operator_id, name, brand_id, now, None)

    async def find_operator(self, token_hash: bytes) -> OperatorRecord | None:
        """The operator holding the token of this hash, revoked or not."""
        async with self._read() as q:
            row = one(await q.fetch(f"{_OPERATOR_SELECT} WHERE token_hash = $1", token_hash))
        return None if row is None else OperatorRecord(*row)

    async def list_operators(self) -> list[OperatorRecord]:
        async with self._read() as q:
            rows = await q.fetch(f"{_OPERATOR_SELECT} ORDER BY created_at, operator_id")
        return [OperatorRecord(*r) for r in rows]

    async def revoke_operator(self, operator_id: str, now: int) -> OperatorRecord:
        async with self._write() as q:
            await q.fetch(
                "UPDATE operators SET revoked_at = $1 WHERE operator_id = $2 AND revoked_at IS NULL", now, operator_id
            )
            row = one(await q.fetch(f"{_OPERATOR_SELECT} WHERE operator_id = $1", operator_id))
            if row is None:
                raise NotFound(f"no operator {operator_id!r}", field="operator_id")
        return OperatorRecord(*row)

    # ---- balance changes made in the cloud

    async def adjust_balance(
        self, brand_id: str, customer_id: str, points: int, reason: str, actor: str, now: int,
        operator_id: str | None = None,
    ) -> AdjustmentRecord:
        """A manual adjustment with a reason and an actor; sent down like any balance change."""
        _check_adjustment(points, reason, actor)
        async with self._write() as q:
            return await balances.adjust(q, brand_id, customer_id, points, reason, actor, operator_id, now)

    async def claim_sale(self, brand_id: str, code_hash: str, customer_id: str, now: int) -> PortalClaim:
        async with self._write() as q:
            return await claims_store.portal_claim(q, brand_id, code_hash, customer_id, now)

    async def run_expiry(self, now: int) -> ExpirySummary:
        """Expire what is due at ``now`` for every brand whose current program
        sets an expiry, as ``expire`` ledger entries. Idempotent: what expired
        is no longer in the lots, so a second run (or one after an interrupted
        run) expires only what is still due. A chunk of customers per
        transaction keeps every batch's wait short."""
        brands = checked = changed = points = 0
        for brand in await self.list_brands():
            program = await self.current_program(brand.brand_id)
            if program is None or program.options.expiry.mode is ExpiryMode.NONE:
                continue
            brands += 1
            async with self._read() as q:
                ids = [r[0] for r in await q.fetch(
                    "SELECT customer_id FROM customers WHERE brand_id = $1 AND balance > 0 ORDER BY customer_id",
                    brand.brand_id,
                )]
            checked += len(ids)
            for start in range(0, len(ids), EXPIRY_CHUNK):
                async with self._write() as q:
                    count, gone = await balances.expire_customers(
                        q, brand.brand_id, ids[start:start + EXPIRY_CHUNK], program.options.expiry, now
                    )
                changed += count
                points += gone
        return ExpirySummary(brands, checked, changed, points)
