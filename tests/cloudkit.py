"""Helpers for the cloud tests: a seeded ledger behind a real aiohttp server,
store signers that build real signed batches and pulls, op builders, and a
raw snapshot of every ledger table (read with plain sqlite3 or a plain
asyncpg connection, not through the code under test) to prove that a
refused request changed nothing. ``Backend`` names the ledger a test runs
on (see tests/conftest.py): SQLite in the data directory, or a PostgreSQL
schema of its own.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.api import MSGPACK, STORAGE
from cloud.app import make_app
from cloud.config import DataDir, make_storage
from cloud.engagement import Engagement
from cloud.keys import CloudKey, create_key
from cloud.service import ACK_WAIT
from cloud.storage import Storage
from protocol import (
    GENESIS_HASH,
    Ack,
    Adjust,
    Batch,
    Consent,
    Downlink,
    Earn,
    Enroll,
    MessageType,
    Op,
    Pull,
    Redeem,
    UpdateProfile,
    Void,
    encode_pull,
    key_id_for,
    open_ack,
    open_downlink,
    public_bytes,
    seal,
    seal_batch,
    uuid7,
)

BRAND = "acme"
OTHER_BRAND = "zeta"
TABLES = (
    "brands", "programs", "stores", "store_keys", "customers", "sales", "ops",
    "ledger_entries", "conflicts", "batches", "brand_counters", "operators", "mismatches", "shortfalls", "adjustments",
    "messages", "consents", "otp_challenges", "portal_limits", "portal_sessions", "claim_tokens", "cloud_keys",
    "inbox", "store_sync", "csv_files", "claimable_sales", "card_links", "card_streaks", "erasures",
)

PG_DSN_ENV = "LOYALTY_TEST_PG_DSN"
DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
T = TypeVar("T")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Clock:
    """The cloud's clock in tests: wall time plus an adjustable offset."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self) -> int:
        return now_ms() + self.offset


def new_id() -> str:
    return uuid7(now_ms())


def any_uuid() -> str:
    return str(uuid.uuid4())


TERMINAL = any_uuid()


_UNIQUE = object()


def enroll(customer_id: str | None = None, *, name: str = "Ada", phone: str | object | None = _UNIQUE,
           op_id: str | None = None) -> Enroll:
    """An enrollment; its phone is one no other customer has unless given (phones are unique in a
    brand: two profiles with one phone are merged, see cloud/merges.py)."""
    at = now_ms()
    customer_id = customer_id or any_uuid()
    if phone is _UNIQUE:
        phone = f"+336{int(uuid.UUID(customer_id)) % 10**8:08d}"
    assert phone is None or isinstance(phone, str)
    return Enroll(
        op_id=op_id or new_id(), at=at, terminal_id=TERMINAL, customer_id=customer_id,
        name=name, phone=phone, email=None, card_code=None,
        consent=Consent(True, ("phone",), "pos", "staff-1", at),
    )


def update(customer_id: str, **fields: Any) -> UpdateProfile:
    values: dict[str, Any] = {"name": None, "phone": None, "email": None, "card_code": None, "clear": ()}
    values.update(fields)
    return UpdateProfile(op_id=new_id(), at=now_ms(), terminal_id=TERMINAL, customer_id=customer_id, **values)


def earn(customer_id: str, sale_id: str, points: int, *, program_version: int = 1,
         op_id: str | None = None, amount: int = 1000) -> Earn:
    return Earn(op_id=op_id or new_id(), at=now_ms(), terminal_id=TERMINAL, customer_id=customer_id,
                sale_id=sale_id, amount=amount, points=points, program_version=program_version)


def redeem(customer_id: str, sale_id: str, points: int, *, program_version: int = 1,
           op_id: str | None = None) -> Redeem:
    return Redeem(op_id=op_id or new_id(), at=now_ms(), terminal_id=TERMINAL, customer_id=customer_id,
                  sale_id=sale_id, points=points, program_version=program_version)


def void(customer_id: str, sale_id: str, reversed_points: int, returned_points: int,
         program_version: int | None = None) -> Void:
    return Void(op_id=new_id(), at=now_ms(), terminal_id=TERMINAL, customer_id=customer_id,
                sale_id=sale_id, reversed_points=reversed_points, returned_points=returned_points,
                program_version=program_version)


def adjust(customer_id: str, points: int) -> Adjust:
    return Adjust(op_id=new_id(), at=now_ms(), terminal_id=TERMINAL, customer_id=customer_id,
                  points=points, reason="goodwill", actor="manager")


@dataclass
class StoreSigner:
    """An edge's signing side: its key, and its sequence and hash chain."""

    store_id: str
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    node_id: str = field(default_factory=any_uuid)
    seq: int = 0
    prev_hash: bytes = GENESIS_HASH
    #: The newest cloud key this edge trusts, named in its pulls.
    cloud_key_id: str = "ed25519:0000000000000000"

    @property
    def key_id(self) -> str:
        return key_id_for(self.key.public_key())

    @property
    def public_raw(self) -> bytes:
        return public_bytes(self.key.public_key())

    def batch(self, ops: Sequence[Op], *, seq: int | None = None, prev_hash: bytes | None = None,
              store_id: str | None = None, key_id: str | None = None) -> tuple[bytes, bytes]:
        """Sealed envelope and batch hash of the next batch, without advancing the chain."""
        batch = Batch(
            store_id=store_id or self.store_id, node_id=self.node_id, key_id=key_id or self.key_id,
            seq=self.seq + 1 if seq is None else seq,
            prev_hash=self.prev_hash if prev_hash is None else prev_hash,
            at=now_ms(), ops=tuple(ops),
        )
        return seal_batch(batch, self.key)

    def advance(self, batch_hash: bytes) -> None:
        self.seq += 1
        self.prev_hash = batch_hash

    def pull(self, cursor: int = 0, limit: int = 100, *, at: int | None = None,
             nonce: bytes | None = None, store_id: str | None = None) -> tuple[bytes, bytes]:
        nonce = nonce or os.urandom(16)
        pull = Pull(store_id or self.store_id, self.key_id, cursor, nonce, at or now_ms(), limit, self.cloud_key_id)
        return seal(MessageType.PULL, encode_pull(pull), self.key, self.key_id), nonce


@dataclass
class Cloud:
    """A running cloud: HTTP client, storage handle, key, clock and paths."""

    client: TestClient[Any, Any]
    storage: Storage
    key: CloudKey
    clock: Clock
    db_path: Path  # the SQLite file (absent on PostgreSQL)
    stores: dict[str, StoreSigner]
    backend: Backend

    async def post(self, path: str, data: bytes, **headers: str) -> tuple[int, bytes]:
        resp = await self.client.post(path, data=data, headers={"Content-Type": MSGPACK, **headers})
        return resp.status, await resp.read()

    async def post_json_error(self, path: str, data: bytes) -> tuple[int, dict[str, Any]]:
        resp = await self.client.post(path, data=data, headers={"Content-Type": MSGPACK})
        assert resp.content_type == "application/json", await resp.text()
        body: dict[str, Any] = await resp.json()
        assert set(body) == {"error"}
        assert {"code", "message", "field"} <= set(body["error"])
        return resp.status, body["error"]

    async def send(self, store: StoreSigner, ops: Sequence[Op]) -> tuple[Ack, bytes]:
        """Send the store's next batch; it must be acknowledged. Returns (ack, raw envelope)."""
        data, batch_hash = store.batch(ops)
        status, body = await self.post("/v1/batches", data)
        assert status == 200, body
        store.advance(batch_hash)
        return open_ack(body, self.key.public), body

    async def pull(self, store: StoreSigner, cursor: int = 0, limit: int = 100) -> tuple[Downlink, bytes]:
        data, nonce = store.pull(cursor, limit)
        status, body = await self.post("/v1/pull", data)
        assert status == 200, body
        return open_downlink(body, self.key.public), nonce

    async def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        return await self.backend.snapshot(self.db_path)

    async def balances(self) -> dict[str, int]:
        return await self.backend.balances(self.db_path)

    async def execute(self, sql: str) -> None:
        await self.backend.execute(self.db_path, sql)


# ---- backends


def base_pg_dsn() -> str:
    return os.environ.get(PG_DSN_ENV) or DEFAULT_PG_DSN


def pg_dsn(schema: str) -> str:
    """The test DSN with ``schema`` as its search path (asyncpg passes it as a server setting)."""
    base = base_pg_dsn()
    return f"{base}{'&' if '?' in base else '?'}search_path={schema}"


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even inside a running loop's thread."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _pg(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise RuntimeError(
            f"PostgreSQL at {dsn} is not reachable ({exc}); start it or point {PG_DSN_ENV} at one"
        ) from exc
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


async def run_async_rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows from a fresh connection of its own (outside any pool under test)."""
    return await _pg(dsn, sql)


def create_pg_schema() -> str:
    schema = "t_" + uuid.uuid4().hex
    run_sync(_pg(base_pg_dsn(), f"CREATE SCHEMA {schema}"))
    return schema


def drop_pg_schema(schema: str) -> None:
    run_sync(_pg(base_pg_dsn(), f"DROP SCHEMA IF EXISTS {schema} CASCADE"))


def pg_schema_exists(schema: str) -> bool:
    rows = run_sync(_pg(base_pg_dsn(), f"SELECT 1 FROM pg_namespace WHERE nspname = '{schema}'"))
    return bool(rows)


@dataclass(frozen=True)
class Backend:
    """The ledger a test runs on: SQLite (dsn None) or a PostgreSQL schema of its own."""

    name: str
    dsn: str | None
    schema: str | None = None

    @property
    def cli_args(self) -> tuple[str, ...]:
        return () if self.dsn is None else ("--dsn", self.dsn)

    def storage(self, data_dir: Path) -> Storage:
        return make_storage(self.dsn, DataDir(data_dir))

    def cli(self, data_dir: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
        """``run(*args, expect=0, stdin=None)``: the real ``loyalty-cloud`` on this ledger, its
        exit status checked (``--data`` and ``--dsn`` added after the verb's own arguments)."""
        exe = str(Path(sys.executable).with_name("loyalty-cloud"))

        def run(*args: str | Path, expect: int = 0, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
            proc = subprocess.run([exe, *map(str, args), "--data", str(data_dir), *self.cli_args],
                                  capture_output=True, text=True, input=stdin, timeout=60, check=False)
            assert proc.returncode == expect, (proc.stdout, proc.stderr)
            return proc

        return run

    def cli_text(self, data_dir: Path) -> Callable[..., str]:
        """As :meth:`cli`, answering the output: stdout, or stderr when a failure is expected."""
        cli = self.cli(data_dir)

        def run(*args: str | Path, expect: int = 0) -> str:
            proc = cli(*args, expect=expect)
            return proc.stdout if expect == 0 else proc.stderr

        return run

    async def rows(self, db_path: Path, sql: str) -> list[tuple[Any, ...]]:
        """Rows read directly (sqlite3 or a plain asyncpg connection), not through the code under test."""
        if self.dsn is not None:
            return await _pg(self.dsn, sql)
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    async def execute(self, db_path: Path, sql: str) -> None:
        if self.dsn is not None:
            await _pg(self.dsn, sql)
            return

        def write() -> None:
            with sqlite3.connect(db_path) as conn:
                conn.execute(sql)
            conn.close()

        # On a thread: the cloud in this process may hold the write lock and needs the loop to let go.
        await asyncio.to_thread(write)

    async def snapshot(self, db_path: Path) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every ledger table (ids and blobs compare equal across reads)."""
        return {t: sorted(await self.rows(db_path, f"SELECT * FROM {t}"), key=repr) for t in TABLES}

    async def balances(self, db_path: Path) -> dict[str, int]:
        return dict(await self.rows(db_path, "SELECT customer_id, balance FROM customers"))

    def snapshot_sync(self, db_path: Path) -> dict[str, list[tuple[Any, ...]]]:
        return run_sync(self.snapshot(db_path))

    def rows_sync(self, db_path: Path, sql: str) -> list[tuple[Any, ...]]:
        return run_sync(self.rows(db_path, sql))


SQLITE = Backend("sqlite", None)


@contextmanager
def pg_backend() -> Iterator[Backend]:
    """A PostgreSQL backend on a fresh schema, dropped on exit."""
    schema = create_pg_schema()
    try:
        yield Backend("postgres", pg_dsn(schema), schema)
    finally:
        drop_pg_schema(schema)


def db_snapshot(db_path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every ledger table, read directly with sqlite3."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in TABLES}
    finally:
        conn.close()


def balances_in_db(db_path: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT customer_id, balance FROM customers").fetchall())
    finally:
        conn.close()


async def seed(storage: Storage, stores: dict[str, StoreSigner]) -> None:
    """Brands acme (program v1: 1 point per 100) and zeta; stores a, b (acme) and z (zeta)."""
    now = now_ms()
    await storage.add_brand(BRAND, "Acme Coffee", now)
    await storage.add_brand(OTHER_BRAND, "Zeta Books", now)
    await storage.set_program(BRAND, "Acme Rewards", 1, 100, now)
    for store_id, brand in (("store-a", BRAND), ("store-b", BRAND), ("store-z", OTHER_BRAND)):
        signer = stores[store_id] = StoreSigner(store_id)
        await storage.add_store(store_id, brand, signer.public_raw, now)


@asynccontextmanager
async def running_cloud(tmp_path: Path, backend: Backend = SQLITE, engagement: Engagement | None = None,
                        clock: Clock | None = None, *, workers: int = 1,
                        ack_wait: float = ACK_WAIT) -> AsyncIterator[Cloud]:
    """A seeded cloud on 127.0.0.1 (random port) with a fresh data dir under tmp_path
    (with the portal and message senders when ``engagement`` is given), applying
    batches with ``workers`` embedded reconcilers."""
    data = tmp_path / "cloud"
    data.mkdir(mode=0o700)
    key = create_key(data / "cloud.key")
    clock = clock or Clock()
    app = make_app(lambda: backend.storage(data), key, clock=clock, engagement=engagement, workers=workers,
                   ack_wait=ack_wait)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await client.start_server()
    try:
        storage = app[STORAGE]
        stores: dict[str, StoreSigner] = {}
        await seed(storage, stores)
        yield Cloud(client, storage, key, clock, DataDir(data).db_file, stores, backend)
    finally:
        await client.close()
