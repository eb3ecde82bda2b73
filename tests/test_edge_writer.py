"""The edge's single writer: group commit, isolation of failing jobs, a full disk."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from edge.db import MIGRATIONS, connect, migrate
from edge.errors import Conflict, StoreError
from edge.writer import Writer


def _setup(path: Path) -> None:
    conn = connect(path)
    migrate(conn)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB)")
    conn.close()


def _insert(value: int, payload: bytes = b"") -> object:
    def job(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO t (id, payload) VALUES (?, ?)", (value, payload))
        return value

    return job


def _count(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM t").fetchone()[0])
    finally:
        conn.close()


async def test_pragmas_are_durable(tmp_path: Path) -> None:
    conn = connect(tmp_path / "x.sqlite3")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert migrate(conn) == [name for name, _ in MIGRATIONS]
    assert migrate(conn) == []  # recorded, so never applied twice
    names = [r[0] for r in conn.execute("SELECT name FROM migrations")]
    assert names == [name for name, _ in MIGRATIONS] and names[0] == "0001_core"


async def test_concurrent_writes_share_commits(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite3"
    _setup(path)
    writer = Writer(path)
    writer.start()
    try:
        results = await asyncio.gather(*(writer.run(_insert(i)) for i in range(300)))  # type: ignore[arg-type]
    finally:
        await writer.close()
    assert sorted(results) == list(range(300))
    assert _count(path) == 300
    assert writer.stats.jobs == 300
    assert writer.stats.commits < 300, "no two writes shared a commit"


async def test_a_failing_job_rolls_back_alone(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite3"
    _setup(path)
    writer = Writer(path)
    writer.start()

    def half_then_refuse(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t (id) VALUES (1000)")
        raise Conflict("business rule")

    try:
        outcomes = await asyncio.gather(
            writer.run(_insert(1)),  # type: ignore[arg-type]
            writer.run(half_then_refuse),
            writer.run(_insert(2)),  # type: ignore[arg-type]
            return_exceptions=True,
        )
    finally:
        await writer.close()
    assert outcomes[0] == 1 and outcomes[2] == 2
    assert isinstance(outcomes[1], Conflict)
    conn = sqlite3.connect(path)
    assert [r[0] for r in conn.execute("SELECT id FROM t ORDER BY id")] == [1, 2]


async def test_full_database_refuses_writes_and_recovers(tmp_path: Path) -> None:
    """SQLITE_FULL (via max_page_count, SQLite's own limit) is a clear StoreError;
    nothing half-written remains, and writes work again once there is room."""
    path = tmp_path / "w.sqlite3"
    _setup(path)
    limit = {"pages": 0}

    def small_connect(p: Path) -> sqlite3.Connection:
        conn = connect(p)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        limit["pages"] = pages + 3
        conn.execute(f"PRAGMA max_page_count = {limit['pages']}")
        return conn

    writer = Writer(path, connect_fn=small_connect)
    writer.start()
    try:
        await writer.run(_insert(1))  # type: ignore[arg-type]
        with pytest.raises(StoreError):
            await writer.run(_insert(2, b"x" * 200_000))  # type: ignore[arg-type]
        assert _count(path) == 1

        def make_room(conn: sqlite3.Connection) -> None:
            conn.execute("PRAGMA max_page_count = 1000000")

        # Room is made outside a transaction, as freeing disk space would be.
        await writer.run(make_room)
        await writer.run(_insert(3, b"x" * 200_000))  # type: ignore[arg-type]
    finally:
        await writer.close()
    assert _count(path) == 2
    assert writer.stats.failures == 1
