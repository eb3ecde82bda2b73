"""SQLite storage: migrations, administration, set-based batch loading, key files."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloud.errors import AlreadyExists, ConfigError, KeyFileError, NotFound, StoreError
from cloud.keys import CloudKey, create_key, load_key, load_or_create_key
from cloud.service import SyncService
from cloud.sqlite_storage import SQLiteStorage
from protocol import open_ack

from . import cloudkit as k


@pytest.fixture
async def cloud_storage(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    storage = SQLiteStorage(tmp_path / "ledger.sqlite3")
    await storage.open(k.now_ms())
    try:
        yield storage
    finally:
        await storage.close()


# ---- migrations


async def test_migrations_are_recorded_once_and_reopen_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    storage = SQLiteStorage(path)
    await storage.open(1_700_000_000_000)
    await storage.add_brand("acme", "Acme", k.now_ms())
    first = await storage.applied_migrations()
    await storage.close()
    assert first == [("0001_ledger", 1_700_000_000_000)]

    again = SQLiteStorage(path)
    await again.open(1_800_000_000_000)
    try:
        assert await again.applied_migrations() == first
        assert [b.brand_id for b in await again.list_brands()] == ["acme"]
    finally:
        await again.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT name, applied_at FROM migrations").fetchall() == first
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_a_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    storage = SQLiteStorage(path)
    await storage.open(k.now_ms())
    await storage.close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO migrations VALUES ('0099_from_the_future', 1)")
    newer = SQLiteStorage(path)
    with pytest.raises(StoreError, match="0099_from_the_future"):
        await newer.open(k.now_ms())
    with pytest.raises(StoreError, match="not open"):
        await newer.find_key("x")


async def test_sqlite_errors_become_store_errors(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(b"this is not a database, just some bytes" * 100)
    with pytest.raises(StoreError) as info:
        await SQLiteStorage(path).open(k.now_ms())
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    with pytest.raises(StoreError, match="not a directory"):
        await SQLiteStorage(tmp_path / "missing-dir" / "ledger.sqlite3").open(k.now_ms())


# ---- administration


async def test_admin_refusals_change_nothing(cloud_storage: SQLiteStorage) -> None:
    now = k.now_ms()
    await cloud_storage.add_brand("acme", "Acme", now)
    first = await cloud_storage.set_program("acme", "Rewards", 1, 100, now)
    before = k.db_snapshot(cloud_storage.path)
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
    assert k.db_snapshot(cloud_storage.path) == before
    second = await cloud_storage.set_program("acme", "Rewards+", 2, 100, now)
    assert (first.version, second.version) == (1, 2)
    assert await cloud_storage.current_program("acme") == second


async def test_a_key_belongs_to_one_store(cloud_storage: SQLiteStorage) -> None:
    now = k.now_ms()
    await cloud_storage.add_brand("acme", "Acme", now)
    signer = k.StoreSigner("store-a")
    key = await cloud_storage.add_store("store-a", "acme", signer.public_raw, now)
    assert (key.key_id, key.store_id, key.brand_id, key.revoked_at) == (signer.key_id, "store-a", "acme", None)
    before = k.db_snapshot(cloud_storage.path)
    with pytest.raises(AlreadyExists):
        await cloud_storage.add_store("store-b", "acme", signer.public_raw, now)
    with pytest.raises(AlreadyExists):
        await cloud_storage.add_store("store-a", "acme", k.StoreSigner("store-a").public_raw, now)
    assert k.db_snapshot(cloud_storage.path) == before
    revoked = await cloud_storage.revoke_key(signer.key_id, now + 5)
    assert revoked.revoked_at == now + 5
    assert (await cloud_storage.find_key(signer.key_id)) == revoked
    (store,) = await cloud_storage.list_stores()
    assert (store.store_id, store.last_seq, store.key_ids) == ("store-a", 0, (signer.key_id,))


# ---- set-based batches


async def test_a_big_batch_costs_a_constant_number_of_statements(tmp_path: Path) -> None:
    """Loading and writing are per batch, never per op (the throughput target depends on it)."""
    storage = SQLiteStorage(tmp_path / "ledger.sqlite3")
    await storage.open(k.now_ms())
    try:
        stores: dict[str, k.StoreSigner] = {}
        await k.seed(storage, stores)
        service = SyncService(storage, CloudKey.from_seed(b"\x07" * 32), k.now_ms)
        signer = stores["store-a"]
        ids = [k.any_uuid() for _ in range(300)]
        statements: list[str] = []
        assert storage._writer is not None
        await storage._writer.set_trace_callback(statements.append)
        data, _ = signer.batch([k.enroll(cid) for cid in ids] + [k.earn(cid, "s-" + cid, 3) for cid in ids])
        ack = open_ack(await service.submit_batch(data), service.cloud_key.public)
        await storage._writer.set_trace_callback(None)
        assert len(ack.results) == 600 and all(r.code is None for r in ack.results)
        # executemany traces one INSERT per row; every other statement is per batch
        per_batch = [sql for sql in statements if not sql.startswith("INSERT")]
        assert len(per_batch) < 15, per_batch
        assert sum(sql.startswith("INSERT INTO ops") for sql in statements) == 600
        assert await storage.audit_balances() == []
        balances = k.balances_in_db(storage.path)
        assert len(balances) == 300 and set(balances.values()) == {3}
    finally:
        await storage.close()


async def test_audit_finds_a_balance_that_is_not_the_sum_of_its_entries(tmp_path: Path) -> None:
    async with k.running_cloud(tmp_path) as cloud:
        cid = k.any_uuid()
        await cloud.send(cloud.stores["store-a"], [k.enroll(cid), k.earn(cid, "s1", 10)])
        assert await cloud.storage.audit_balances() == []
        with sqlite3.connect(cloud.db_path) as conn:
            conn.execute("UPDATE customers SET balance = 11")
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
