"""Ledger storage on each backend: migrations, administration, set-based batch
loading, error translation; and the cloud key files."""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from cloud.errors import AlreadyExists, ConfigError, KeyFileError, NotFound, NotYetApplied, StoreError, WriterBusy
from cloud.keys import CloudKey, create_key, load_key, load_or_create_key
from cloud.pg_storage import PgStorage
from cloud.service import SyncService
from cloud.sqlite_schema import MIGRATIONS
from cloud.sqlite_storage import SQLiteStorage
from cloud.storage import Storage
from cloud.worker import Worker
from protocol import open_ack

from . import cloudkit as k


@pytest.fixture
async def cloud_storage(tmp_path: Path, backend: k.Backend) -> AsyncIterator[Storage]:
    storage = backend.storage(tmp_path)
    await storage.open(k.now_ms())
    try:
        yield storage
    finally:
        await storage.close()


def db_file(tmp_path: Path) -> Path:
    """Where ``backend.storage(tmp_path)`` keeps a SQLite ledger (unused on PostgreSQL)."""
    return tmp_path / "cloud.sqlite3"


# ---- migrations


async def test_migrations_are_recorded_once_and_reopen_is_idempotent(tmp_path: Path, backend: k.Backend) -> None:
    storage = backend.storage(tmp_path)
    await storage.open(1_700_000_000_000)
    await storage.add_brand("acme", "Acme", k.now_ms())
    first = await storage.applied_migrations()
    await storage.close()
    assert first == [(m.name, 1_700_000_000_000) for m in MIGRATIONS]

    again = backend.storage(tmp_path)
    await again.open(1_800_000_000_000)
    try:
        assert await again.applied_migrations() == first
        assert [b.brand_id for b in await again.list_brands()] == ["acme"]
    finally:
        await again.close()
    assert await backend.rows(db_file(tmp_path), "SELECT name, applied_at FROM migrations") == first
    if backend.dsn is None:
        assert await backend.rows(db_file(tmp_path), "PRAGMA journal_mode") == [("wal",)]


async def test_a_database_from_a_newer_version_is_refused(tmp_path: Path, backend: k.Backend) -> None:
    storage = backend.storage(tmp_path)
    await storage.open(k.now_ms())
    await storage.close()
    await backend.execute(db_file(tmp_path), "INSERT INTO migrations VALUES ('0099_from_the_future', 1)")
    newer = backend.storage(tmp_path)
    with pytest.raises(StoreError, match="0099_from_the_future"):
        await newer.open(k.now_ms())
    with pytest.raises(StoreError, match="not open"):
        await newer.find_key("x")


async def test_two_processes_opening_a_fresh_postgres_schema_migrate_it_once(pg: k.Backend) -> None:
    """The advisory lock: concurrent opens of an empty schema do not both run 0001."""
    assert pg.dsn is not None
    first, second = PgStorage(pg.dsn), PgStorage(pg.dsn)
    await asyncio.gather(first.open(111), second.open(222))
    try:
        applied = await first.applied_migrations()
        assert [name for name, _ in applied] == [m.name for m in MIGRATIONS]
        assert len({at for _, at in applied}) == 1 and applied[0][1] in (111, 222)  # one opener did it all
        assert await second.applied_migrations() == applied
    finally:
        await first.close()
        await second.close()


async def test_sqlite_errors_become_store_errors(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(b"this is not a database, just some bytes" * 100)
    with pytest.raises(StoreError) as info:
        await SQLiteStorage(path).open(k.now_ms())
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    with pytest.raises(StoreError, match="not a directory"):
        await SQLiteStorage(tmp_path / "missing-dir" / "ledger.sqlite3").open(k.now_ms())


async def test_postgres_errors_become_store_errors(pg: k.Backend) -> None:
    assert pg.dsn is not None and pg.schema is not None
    with pytest.raises(StoreError, match=re.escape("cannot open postgresql://postgres@127.0.0.1:1/")) as info:
        await PgStorage("postgresql://postgres:s3cret@127.0.0.1:1/test", timeout=5).open(k.now_ms())
    assert isinstance(info.value.__cause__, OSError)
    assert "s3cret" not in str(info.value)  # messages and logs never carry the password
    with pytest.raises(StoreError) as info:
        await PgStorage(k.pg_dsn(pg.schema + "_missing")).open(k.now_ms())  # no such schema to create in
    assert isinstance(info.value.__cause__, asyncpg.PostgresError)
    storage = PgStorage(pg.dsn)
    await storage.open(k.now_ms())
    try:
        await pg.execute(Path(), "DROP TABLE store_keys CASCADE")
        with pytest.raises(StoreError, match="UndefinedTableError") as info:
            await storage.find_key("ed25519:0000000000000000")
        assert isinstance(info.value.__cause__, asyncpg.UndefinedTableError)
        await storage.ping()  # the failed read's connection went back to the pool usable
    finally:
        await storage.close()


def test_each_postgres_test_schema_is_dropped_afterwards() -> None:
    with k.pg_backend() as pg:
        assert pg.schema is not None and k.pg_schema_exists(pg.schema)
    assert not k.pg_schema_exists(pg.schema)


# ---- administration


async def test_admin_refusals_change_nothing(cloud_storage: Storage, backend: k.Backend, tmp_path: Path) -> None:
    now = k.now_ms()
    await cloud_storage.add_brand("acme", "Acme", now)
    first = await cloud_storage.set_program("acme", "Rewards", 1, 100, now)
    before = await backend.snapshot(db_file(tmp_path))
    with pytest.raises(AlreadyExists):
        await cloud_storage.add_brand("acme", "Other", now)
    with pytest.raises(ConfigError) as info:
        await cloud_storage.add_brand("Bad Id", "x", now)
    assert info.value.field == "brand_id"
    with pytest.raises(ConfigError) as info:
        await cloud_storage.set_program("acme", "Rewards", -1, 100, now)
    assert info.value.field == "points_per_unit"
    with pytest.raises(ConfigError):
        await cloud_storage.set_program("acme", "Rewards", 1, 0, now)
    with pytest.raises(NotFound):
        await cloud_storage.set_program("nobody", "Rewards", 1, 100, now)
    with pytest.raises(NotFound):
        await cloud_storage.add_store("store-a", "nobody", k.StoreSigner("store-a").public_raw, now)
    with pytest.raises(ConfigError):
        await cloud_storage.add_store("store-a", "acme", b"\x01" * 31, now)
    with pytest.raises(NotFound):
        await cloud_storage.revoke_key("ed25519:0000000000000000", now)
    assert await backend.snapshot(db_file(tmp_path)) == before
    second = await cloud_storage.set_program("acme", "Rewards+", 2, 100, now)
    assert (first.version, second.version) == (1, 2)
    assert await cloud_storage.current_program("acme") == second


async def test_a_key_belongs_to_one_store(cloud_storage: Storage, backend: k.Backend, tmp_path: Path) -> None:
    now = k.now_ms()
    await cloud_storage.add_brand("acme", "Acme", now)
    signer = k.StoreSigner("store-a")
    key = await cloud_storage.add_store("store-a", "acme", signer.public_raw, now)
    assert (key.key_id, key.store_id, key.brand_id, key.revoked_at) == (signer.key_id, "store-a", "acme", None)
    before = await backend.snapshot(db_file(tmp_path))
    with pytest.raises(AlreadyExists):
        await cloud_storage.add_store("store-b", "acme", signer.public_raw, now)
    with pytest.raises(AlreadyExists):
        await cloud_storage.add_store("store-a", "acme", k.StoreSigner("store-a").public_raw, now)
    assert await backend.snapshot(db_file(tmp_path)) == before
    revoked = await cloud_storage.revoke_key(signer.key_id, now + 5)
    assert revoked.revoked_at == now + 5
    assert (await cloud_storage.find_key(signer.key_id)) == revoked
    (store,) = await cloud_storage.list_stores()
    assert (store.store_id, store.last_seq, store.key_ids) == ("store-a", 0, (signer.key_id,))


# ---- set-based batches

KEY = CloudKey.from_seed(b"\x07" * 32)


@dataclass
class Receiving:
    """A seeded ledger whose service receives batches into the inbox; nobody applies them here."""

    storage: Storage
    stores: dict[str, k.StoreSigner]
    service: SyncService

    async def queue(self, store_id: str, ops: list[k.Op]) -> bytes:
        """Receive the store's next batch of ``ops``; its envelope."""
        signer = self.stores[store_id]
        data, batch_hash = signer.batch(ops)
        signer.advance(batch_hash)
        with pytest.raises(NotYetApplied):
            await self.service.submit_batch(data)
        return data


@asynccontextmanager
async def receiving(storage: Storage) -> AsyncIterator[Receiving]:
    await storage.open(k.now_ms())
    try:
        stores: dict[str, k.StoreSigner] = {}
        await k.seed(storage, stores)
        yield Receiving(storage, stores, SyncService(storage, KEY, k.now_ms, ack_wait=0))
    finally:
        await storage.close()


async def test_a_big_batch_costs_a_constant_number_of_statements(tmp_path: Path) -> None:
    """Loading and writing are per batch, never per op (the throughput target depends on it)."""
    storage = SQLiteStorage(tmp_path / "ledger.sqlite3")
    async with receiving(storage) as inbox:
        ids = [k.any_uuid() for _ in range(300)]
        await inbox.queue("store-a", [k.enroll(cid) for cid in ids] + [k.earn(cid, "s-" + cid, 3) for cid in ids])
        statements: list[str] = []
        assert storage._writer is not None
        await storage._writer.set_trace_callback(statements.append)
        applied = await Worker(storage, KEY, k.now_ms).apply_next()
        await storage._writer.set_trace_callback(None)
        assert applied is not None
        ack = open_ack(applied.ack, KEY.public)
        assert len(ack.results) == 600 and all(r.code is None for r in ack.results)
        # executemany traces one INSERT per row; every other statement is per batch
        per_batch = [sql for sql in statements if not sql.startswith("INSERT")]
        assert len(per_batch) < 15, per_batch
        assert sum(sql.startswith("INSERT INTO ops") for sql in statements) == 600
        assert await storage.audit_balances() == []
        balances = k.balances_in_db(storage.path)
        assert len(balances) == 300 and set(balances.values()) == {3}


async def test_a_big_batch_on_postgres_costs_a_constant_number_of_statements(pg: k.Backend) -> None:
    """COPY and unnest writes: one statement per table whatever the batch size, not one per op."""
    assert pg.dsn is not None
    statements: list[str] = []
    storage = PgStorage(pg.dsn, on_query=statements.append)
    async with receiving(storage) as inbox:
        worker = Worker(storage, KEY, k.now_ms)
        counts = []
        for size in (2, 3, 300):
            ids = [k.any_uuid() for _ in range(size)]
            await inbox.queue("store-a", [k.enroll(cid) for cid in ids] + [k.earn(cid, "s-" + cid, 3) for cid in ids])
            statements.clear()
            applied = await worker.apply_next()
            assert applied is not None
            ack = open_ack(applied.ack, KEY.public)
            assert len(ack.results) == 2 * size and all(r.code is None for r in ack.results)
            # ops, ledger entries and conflicts go by COPY (which asyncpg does not log), never row by row
            assert not [sql for sql in statements if sql.startswith(("INSERT INTO ops", "INSERT INTO ledger_entries"))]
            counts.append(len(statements))
        # The apply transaction, BEGIN/COMMIT included: 100x the ops, same count.
        # (The first batch also pays asyncpg's one-time introspection of the array types.)
        assert counts[1] == counts[2] < 25, (counts, statements)
        assert await storage.audit_balances() == []
        assert await pg.rows(Path(), "SELECT COUNT(*), COUNT(DISTINCT seq) FROM ops") == [(610, 3)]
        assert await pg.rows(Path(), "SELECT COUNT(*) FROM ledger_entries") == [(305,)]
        balances = await pg.balances(Path())
        assert len(balances) == 305 and set(balances.values()) == {3}


async def test_audit_finds_a_balance_that_is_not_the_sum_of_its_entries(tmp_path: Path, backend: k.Backend) -> None:
    async with k.running_cloud(tmp_path, backend) as cloud:
        cid = k.any_uuid()
        await cloud.send(cloud.stores["store-a"], [k.enroll(cid), k.earn(cid, "s1", 10)])
        assert await cloud.storage.audit_balances() == []
        await cloud.execute("UPDATE customers SET balance = 11")
        (mismatch,) = await cloud.storage.audit_balances()
        assert (mismatch.customer_id, mismatch.balance, mismatch.entries_total) == (cid, 11, 10)


# ---- key files


def test_key_file_is_created_0600_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "cloud.key"
    old = os.umask(0)
    try:
        key = create_key(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == 32
    assert load_key(path).key_id == key.key_id
    again, created = load_or_create_key(path)
    assert (again.public_hex, created) == (key.public_hex, False)
    with pytest.raises(KeyFileError, match="already exists"):
        create_key(path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_a_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "cloud.key"
    create_key(path)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match="0600"):
        load_key(path)


def test_a_key_file_of_the_wrong_size_or_missing_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cloud.key"
    with pytest.raises(KeyFileError, match="init"):
        load_key(path)
    path.write_bytes(b"\x01" * 33)
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match="32 bytes"):
        load_key(path)


async def test_pooled_connections_the_server_dropped_are_replaced(tmp_path: Path, pg: k.Backend) -> None:
    """A database restart or failover kills the pool's sessions; the next batch still applies."""
    assert pg.dsn is not None and pg.schema is not None
    tagged = k.Backend("postgres", f"{pg.dsn}&application_name={pg.schema}", pg.schema)
    async with k.running_cloud(tmp_path, tagged) as cloud:
        store = cloud.stores["store-a"]
        cid = k.any_uuid()
        await cloud.send(store, [k.enroll(cid), k.earn(cid, "s1", 10)])
        sessions = f"FROM pg_stat_activity WHERE application_name = '{pg.schema}'"
        killed = await k.run_async_rows(k.base_pg_dsn(), f"SELECT pid, pg_terminate_backend(pid) {sessions}")
        assert killed and all(ok for _, ok in killed)
        pids = ", ".join(str(pid) for pid, _ in killed)
        for _ in range(100):  # the server ends them asynchronously (at most ~5 s)
            if not await k.run_async_rows(k.base_pg_dsn(), f"SELECT pid {sessions} AND pid IN ({pids})"):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"sessions {pids} outlived pg_terminate_backend")
        ack, _ = await cloud.send(store, [k.earn(cid, "s2", 5)])
        assert ack.balances[0].points == 15
        assert await cloud.balances() == {cid: 15}


# ---- several batches in one transaction


async def test_one_transaction_applies_several_stores_batches_each_seeing_the_one_before(tmp_path: Path) -> None:
    """Four batches waiting (two of store a, one of b, one of store z of another brand): one SQLite
    step applies a's two and b's in one transaction, in chain order, each deciding on what the one
    before it wrote; z's brand waits for the next step. Every ack is the one a resend gets."""
    storage = SQLiteStorage(tmp_path / "cloud.sqlite3")
    async with receiving(storage) as inbox:
        cid, zid = k.any_uuid(), k.any_uuid()
        envelopes = [await inbox.queue("store-a", [k.enroll(cid), k.earn(cid, "s1", 100)]),
                     await inbox.queue("store-z", [k.enroll(zid), k.earn(zid, "z1", 5)]),
                     await inbox.queue("store-b", [k.redeem(cid, "s2", 60)]),
                     await inbox.queue("store-a", [k.redeem(cid, "s3", 60), k.earn(cid, "s4", 10)])]
        worker = Worker(storage, KEY, k.now_ms, group=8)
        first = await worker.apply_some()
        assert [(a.store_id, a.seq) for a in first] == [("store-a", 1), ("store-b", 1), ("store-a", 2)]
        acks = [open_ack(a.ack, KEY.public) for a in first]
        assert [[(r.status.value, r.code) for r in ack.results] for ack in acks] == [
            [("applied", None), ("applied", None)],
            [("applied", None)],
            [("refused", "insufficient_balance"), ("applied", None)],
        ]
        assert [ack.balances[0].points for ack in acks] == [100, 40, 50]
        # versions keep counting across the batches of one transaction
        versions = [ack.balances[0].version for ack in acks]
        assert versions == sorted(versions) and len(set(versions)) == 3
        assert await storage.inbox_depth() == 1
        second = await worker.apply_some()
        assert [(a.store_id, a.seq) for a in second] == [("store-z", 1)]
        assert await worker.apply_some() == []
        for data, applied in zip([envelopes[0], envelopes[2], envelopes[3]], first, strict=True):
            assert await inbox.service.submit_batch(data) == applied.ack  # a resend gets the stored ack
        assert await storage.audit_balances() == []
        conflicts = await storage.list_conflicts()
        assert [(c.store_id, c.points_requested, c.balance_available) for c in conflicts] == [("store-a", 60, 40)]


async def test_several_batches_commit_once_on_sqlite(tmp_path: Path) -> None:
    """The point of a step of several batches: one COMMIT (one fsync) for all of them."""
    storage = SQLiteStorage(tmp_path / "cloud.sqlite3")
    async with receiving(storage) as inbox:
        for n in range(3):
            cid = k.any_uuid()
            await inbox.queue("store-a", [k.enroll(cid), k.earn(cid, f"s{n}", 5)])
        statements: list[str] = []
        assert storage._writer is not None
        await storage._writer.set_trace_callback(statements.append)
        applied = await Worker(storage, KEY, k.now_ms, group=8).apply_some()
        await storage._writer.set_trace_callback(None)
        assert [a.seq for a in applied] == [1, 2, 3]
        assert [sql for sql in statements if sql in ("BEGIN IMMEDIATE", "COMMIT")] == ["BEGIN IMMEDIATE", "COMMIT"]
        assert len(k.balances_in_db(storage.path)) == 3


async def test_a_batch_that_cannot_be_applied_costs_the_rest_of_its_step_only_a_retry(
    tmp_path: Path, backend: k.Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """Store b's batch no longer decodes (a damaged inbox row). On SQLite the step holding it and
    a's batch rolls back whole and the next step takes a's batch alone; on PostgreSQL each is a
    step of its own. Either way a's batch is applied; b's stays, reported."""
    storage = backend.storage(tmp_path)
    async with receiving(storage) as inbox:
        cid = k.any_uuid()
        await inbox.queue("store-a", [k.enroll(cid), k.earn(cid, "s1", 10)])
        await inbox.queue("store-b", [k.earn(cid, "s2", 5)])
        damaged = "'\\xc1'::bytea" if backend.dsn is not None else "X'c1'"
        await backend.execute(db_file(tmp_path), f"UPDATE inbox SET body = {damaged} WHERE store_id = 'store-b'")
        applied: list[tuple[str, int]] = []
        worker = Worker(storage, KEY, k.now_ms, group=8, on_applied=lambda a: applied.append((a.store_id, a.seq)))
        task = asyncio.create_task(worker.run(poll_interval=0.01))
        try:
            for _ in range(100):  # bounded: 5 s
                if applied:
                    break
                await asyncio.sleep(0.05)
        finally:
            worker.stop()
            await asyncio.wait_for(task, 10)
        assert applied == [("store-a", 1)]
        assert await storage.inbox_depth() == 1
        assert "store-b no longer decodes" in caplog.text
        assert await storage.audit_balances() == []


async def test_sqlite_copies_its_wal_into_the_database_off_the_writers_path(tmp_path: Path) -> None:
    """Committed batches reach the database file itself (read as immutable: the WAL ignored)
    through the checkpointer, while the writer's own checkpoint waits for 4,000 WAL pages."""
    storage = SQLiteStorage(tmp_path / "cloud.sqlite3")
    async with receiving(storage) as inbox:
        assert storage._writer is not None
        assert await storage._writer.execute_fetchall("PRAGMA wal_autocheckpoint") == [(4000,)]
        cid = k.any_uuid()
        await inbox.queue("store-a", [k.enroll(cid), k.earn(cid, "s1", 5)])
        assert await Worker(storage, KEY, k.now_ms).apply_next() is not None

        def in_file() -> list[tuple[int]]:
            db = sqlite3.connect(f"file:{storage.path}?immutable=1", uri=True)
            try:
                return db.execute("SELECT balance FROM customers WHERE customer_id = ?", (cid,)).fetchall()
            finally:
                db.close()

        for _ in range(100):  # bounded: 5 s
            if in_file():
                break
            await asyncio.sleep(0.05)
        assert in_file() == [(5,)]
        assert storage._checkpointer.runs >= 1


def test_balance_only_names_the_customers_whose_profile_a_batch_left_as_it_was() -> None:
    from cloud.model import CustomerState, balance_only

    def row(cid: str, phone: str | None, balance: int, version: int) -> CustomerState:
        return CustomerState(cid, k.BRAND, "Ada", phone, None, None, "{}", balance, version, "store-a", 1, version)

    before = {"a": row("a", None, 10, 1), "b": row("b", "+15550100", 10, 2)}
    after = [row("a", None, 25, 7), row("b", "+15550199", 10, 8), row("c", None, 0, 9)]
    assert balance_only(before, after) == {"a"}  # b's phone changed; c is new


async def test_a_step_stops_taking_batches_once_it_holds_enough_ops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer is held for a bounded time: a step takes batches until they hold STEP_OPS ops."""
    monkeypatch.setattr("cloud.worker.STEP_OPS", 4)
    storage = SQLiteStorage(tmp_path / "cloud.sqlite3")
    async with receiving(storage) as inbox:
        cid = k.any_uuid()
        await inbox.queue("store-a", [k.enroll(cid), k.earn(cid, "s1", 5), k.earn(cid, "s2", 5)])
        await inbox.queue("store-b", [k.earn(cid, "s3", 5), k.earn(cid, "s4", 5), k.earn(cid, "s5", 5)])
        await inbox.queue("store-a", [k.earn(cid, "s6", 5)])
        worker = Worker(storage, KEY, k.now_ms)
        assert [(a.store_id, a.seq) for a in await worker.apply_some()] == [("store-a", 1), ("store-b", 1)]
        assert [(a.store_id, a.seq) for a in await worker.apply_some()] == [("store-a", 2)]
        assert k.balances_in_db(storage.path) == {cid: 30}


async def test_a_worker_waits_its_turn_when_another_process_holds_the_sqlite_writer(tmp_path: Path) -> None:
    """Past the busy timeout a worker does not fail: it tries again until the writer is free
    (several reconcile processes on one SQLite file); a receive is refused as busy, changing nothing."""
    storage = SQLiteStorage(tmp_path / "cloud.sqlite3", busy_timeout_ms=100)
    async with receiving(storage) as inbox:
        cid = k.any_uuid()
        await inbox.queue("store-a", [k.enroll(cid), k.earn(cid, "s1", 5)])
        other = sqlite3.connect(storage.path, isolation_level=None)  # another process's writer
        try:
            other.execute("BEGIN IMMEDIATE")
            drain = asyncio.create_task(Worker(storage, KEY, k.now_ms).drain())
            await asyncio.sleep(0.5)  # five busy timeouts
            assert not drain.done()
            with pytest.raises(WriterBusy):
                await inbox.queue("store-b", [k.earn(cid, "s2", 5)])
            other.execute("ROLLBACK")
            assert await asyncio.wait_for(drain, 10) == 1
        finally:
            other.close()
        assert k.balances_in_db(storage.path) == {cid: 5}
        assert await storage.inbox_depth() == 0
