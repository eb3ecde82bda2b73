"""Cloud benchmark: apply throughput of the reconciler, and the idle ack latency.

Run with ``bench/cloud_run``. Prints a table and one line ``BENCH_JSON {...}``.

Apply: ``--stores`` simulated stores (of ``--brands`` brands) each send
``--batches`` signed batches of ``--ops`` ops: enrollments, earns, redemptions
(some over the balance: refused, recorded as conflicts), adjustments and
voids, a share of them on other stores' customers. The batches are received
through the sync service into the inbox (not timed), then ``--workers`` N
worker processes (the real ``worker.Worker``, as ``loyalty-cloud reconcile
--workers N --drain`` runs them) start together and the time until the last
one has drained the inbox is measured: ops/s = ops / that time. Every op is
decided with its balance check. On PostgreSQL the same run then COPYs the
rows the apply wrote (ops, ledger entries, sales, customers, conflicts,
batches) into empty copies of their tables, indexes included, over one
connection: the ceiling for this machine. On SQLite the analog: the same rows
inserted with executemany into an empty ledger in one transaction.

Latency: a real ``loyalty-cloud serve`` (one embedded worker), idle, takes
one-op batches one after the other over HTTP on 127.0.0.1; the time from
POST to verified ack is measured per batch.

Every loop is bounded in count and time (``--limit`` seconds per step).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from cloud.config import DataDir, make_storage  # noqa: E402
from cloud.errors import NotYetApplied  # noqa: E402
from cloud.keys import CloudKey, create_key  # noqa: E402
from cloud.service import SyncService  # noqa: E402
from cloud.storage import Storage  # noqa: E402
from cloud.worker import Worker  # noqa: E402
from protocol import (  # noqa: E402
    GENESIS_HASH,
    Adjust,
    Batch,
    Consent,
    Earn,
    Enroll,
    Op,
    Redeem,
    Void,
    key_id_for,
    load_public_key,
    open_ack,
    public_bytes,
    seal_batch,
    uuid7,
)

VENV_BIN = Path(sys.executable).parent
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
#: The rows the apply wrote, by table (not the customers and entries seed_customers put there).
COPIED = {
    "ops": "SELECT * FROM ops",
    "ledger_entries": "SELECT e.* FROM ledger_entries e WHERE e.op_id IN (SELECT op_id FROM ops)",
    "sales": "SELECT * FROM sales",
    "customers": "SELECT * FROM customers WHERE customer_id IN (SELECT customer_id FROM ops)",
    "conflicts": "SELECT * FROM conflicts",
    "batches": "SELECT * FROM batches",
}
OPENING_BALANCE = 200


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# ---- the workload: signed batches of simulated stores


@dataclass
class SimStore:
    store_id: str
    brand_id: str
    key: Ed25519PrivateKey
    node_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    customers: list[str] = field(default_factory=list)
    sales: list[tuple[str, str]] = field(default_factory=list)  # (sale_id, customer_id) earned on
    seq: int = 0
    prev: bytes = GENESIS_HASH


@dataclass
class Workload:
    stores: list[SimStore]
    rounds: list[list[bytes]]  # rounds[r] = the r-th batch of every store, sealed
    ops: int


def make_workload(n_stores: int, n_brands: int, n_batches: int, n_ops: int, n_customers: int,
                  seed: int = 7) -> Workload:
    rng = random.Random(seed)
    terminal = str(uuid.uuid4())
    at = now_ms()
    stores = [SimStore(f"bench-{i:03d}", f"brand-{i % n_brands:02d}", Ed25519PrivateKey.generate())
              for i in range(n_stores)]
    for s in stores:  # the customers each store already has (seed_customers puts them in the ledger)
        s.customers = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n_customers)]
    by_brand: dict[str, list[SimStore]] = {}
    for s in stores:
        by_brand.setdefault(s.brand_id, []).append(s)
    rounds: list[list[bytes]] = []
    total = 0
    for r in range(n_batches):
        sealed = []
        for s in stores:
            ops: list[Op] = []
            for _ in range(n_ops // 100):  # new customers, who earn in the same batch
                cid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                s.customers.append(cid)
                ops.append(Enroll(op_id=uuid7(at), at=at, terminal_id=terminal, customer_id=cid, name="Bench",
                                  phone=None, email=None, card_code=f"BENCH{s.store_id}-{len(s.customers):06d}",
                                  consent=Consent(True, (), rng.choice(("pos", "kiosk")), None, at)))
            while len(ops) < n_ops:
                neighbours = by_brand[s.brand_id]
                home = s if rng.random() < 0.95 else rng.choice(neighbours)
                cid = rng.choice(home.customers) if home.customers else rng.choice(s.customers)
                roll = rng.random()
                sale = f"{s.store_id}-{r}-{len(ops)}"
                if roll < 0.65:
                    amount = rng.randint(100, 20_000)
                    ops.append(Earn(op_id=uuid7(at), at=at, terminal_id=terminal, customer_id=cid, sale_id=sale,
                                    amount=amount, points=amount // 100, program_version=1))
                    s.sales.append((sale, cid))
                elif roll < 0.90:
                    ops.append(Redeem(op_id=uuid7(at), at=at, terminal_id=terminal, customer_id=cid, sale_id=sale,
                                      points=rng.randint(1, 120), program_version=1))
                elif roll < 0.97 or not s.sales:
                    ops.append(Adjust(op_id=uuid7(at), at=at, terminal_id=terminal, customer_id=cid,
                                      points=rng.choice((-1, 1)) * rng.randint(1, 40), reason="bench",
                                      actor="bench"))
                else:
                    sale_id, owner = s.sales.pop(rng.randrange(len(s.sales)))
                    ops.append(Void(op_id=uuid7(at), at=at, terminal_id=terminal, customer_id=owner,
                                    sale_id=sale_id, reversed_points=0, returned_points=0))
            batch = Batch(store_id=s.store_id, node_id=s.node_id, key_id=key_id_for(s.key.public_key()),
                          seq=s.seq + 1, prev_hash=s.prev, at=at, ops=tuple(ops))
            envelope, digest = seal_batch(batch, s.key)
            s.seq, s.prev = s.seq + 1, digest
            sealed.append(envelope)
            total += len(ops)
        rounds.append(sealed)
    return Workload(stores, rounds, total)


# ---- ledgers


@dataclass
class Ledger:
    """Where one configuration runs: SQLite in ``data`` or a PostgreSQL schema."""

    name: str
    data: Path
    dsn: str | None

    def storage(self) -> Storage:
        return make_storage(self.dsn, DataDir(self.data))


@asynccontextmanager
async def fresh_ledger(root: Path, backend: str, pg_dsn: str, label: str) -> AsyncIterator[Ledger]:
    data = root / label
    data.mkdir(mode=0o700, parents=True)
    if backend == "sqlite":
        yield Ledger(label, data, None)
        return
    schema = "bench_" + uuid.uuid4().hex[:12]
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        try:
            yield Ledger(label, data, f"{pg_dsn}{'&' if '?' in pg_dsn else '?'}search_path={schema}")
        finally:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()


async def provision(storage: Storage, workload: Workload) -> None:
    now = now_ms()
    for brand in sorted({s.brand_id for s in workload.stores}):
        await storage.add_brand(brand, brand, now)
        await storage.set_program(brand, "Bench", 1, 100, now, json.dumps({"point_value": {"amount": 1, "points": 1}}))
    for s in workload.stores:
        await storage.add_store(s.store_id, s.brand_id, public_bytes(s.key.public_key()), now)


async def seed_customers(ledger: Ledger, workload: Workload, n_customers: int) -> None:
    """Each store's existing customers, written straight into the ledger with their opening balance
    and its ledger entry (so the audit holds): a chain's ledger is not empty when batches come."""
    now = now_ms()
    consent = json.dumps({"terms_accepted": True, "channels": [], "source": "import", "staff": None, "at": now})
    customers, entries = [], []
    version: dict[str, int] = {}
    for s in workload.stores:
        for n, cid in enumerate(s.customers[:n_customers]):
            v = version[s.brand_id] = version.get(s.brand_id, 0) + 1
            customers.append((cid, s.brand_id, "Seeded", None, None, f"SEED{s.store_id}-{n:06d}", consent,
                              OPENING_BALANCE, v, s.store_id, now, now))
            entries.append((cid, uuid7(now), s.store_id, None, "adjust", OPENING_BALANCE, now))
    customer_cols = ["customer_id", "brand_id", "name", "phone", "email", "card_code", "consent", "balance",
                     "version", "enrolled_store", "created_at", "updated_at"]
    entry_cols = ["customer_id", "op_id", "store_id", "sale_id", "kind", "points", "at"]
    if ledger.dsn is not None:
        conn = await asyncpg.connect(ledger.dsn)
        try:
            await conn.copy_records_to_table("customers", records=customers, columns=customer_cols)
            await conn.copy_records_to_table("ledger_entries", records=entries, columns=entry_cols)
            await conn.executemany("UPDATE brand_counters SET value = $2 WHERE brand_id = $1", list(version.items()))
            await conn.execute("ANALYZE")
        finally:
            await conn.close()
        return
    with sqlite3.connect(ledger.data / "cloud.sqlite3") as db:
        db.executemany(f"INSERT INTO customers ({', '.join(customer_cols)}) VALUES ({', '.join('?' * 12)})",
                       customers)
        db.executemany(f"INSERT INTO ledger_entries ({', '.join(entry_cols)}) VALUES ({', '.join('?' * 7)})", entries)
        db.executemany("UPDATE brand_counters SET value = ? WHERE brand_id = ?", [(v, b) for b, v in version.items()])
    db.close()


async def fill_inbox(ledger: Ledger, key: CloudKey, workload: Workload, n_customers: int) -> float:
    storage = ledger.storage()
    await storage.open(now_ms())
    try:
        await provision(storage, workload)
        await seed_customers(ledger, workload, n_customers)
        service = SyncService(storage, key, now_ms, ack_wait=0)
        started = time.perf_counter()
        for sealed in workload.rounds:
            for envelope in sealed:
                try:
                    await service.submit_batch(envelope)
                except NotYetApplied:
                    pass
                else:
                    raise RuntimeError("a batch was applied while no worker ran")
        return time.perf_counter() - started
    finally:
        await storage.close()


def _worker_main(ledger: Ledger, seed: bytes, ready: Any, go: Any, results: Any) -> None:
    async def run() -> tuple[int, float, float]:
        storage = ledger.storage()
        await storage.open(now_ms())
        try:
            worker = Worker(storage, CloudKey.from_seed(seed), now_ms)
            ready.release()
            await asyncio.get_running_loop().run_in_executor(None, go.wait)
            started, cpu = time.perf_counter(), time.process_time()
            count = await worker.drain()
            return count, time.perf_counter() - started, time.process_time() - cpu
        finally:
            await storage.close()

    results.put(asyncio.run(run()))


def apply_with_workers(ledger: Ledger, seed: bytes, workers: int, limit: float) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    ready, go, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker_main, args=(ledger, seed, ready, go, results)) for _ in range(workers)]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            if not ready.acquire(timeout=60):
                raise RuntimeError("a worker did not start")
        started = time.perf_counter()
        go.set()
        for p in procs:
            p.join(timeout=max(1.0, limit - (time.perf_counter() - started)))
            if p.is_alive():
                raise RuntimeError(f"the apply took longer than {limit} s")
        seconds = time.perf_counter() - started
        counts = [results.get(timeout=10) for _ in procs]
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    return {"seconds": seconds, "batches_per_worker": sorted(c for c, _, _ in counts),
            "worker_cpu_s": round(sum(cpu for _, _, cpu in counts), 2)}


async def verify(ledger: Ledger, workload: Workload) -> dict[str, Any]:
    storage = ledger.storage()
    await storage.open(now_ms())
    try:
        assert await storage.inbox_depth() == 0, "the inbox was not drained"
        mismatches = await storage.audit_balances()
        assert not mismatches, f"{len(mismatches)} balances differ from their entries"
        stores = await storage.list_store_sync()
        assert all(s.applied_seq == len(workload.rounds) for s in stores)
        conflicts = len(await storage.list_conflicts())
    finally:
        await storage.close()
    return {"conflicts": conflicts}


# ---- the COPY ceiling (PostgreSQL)


async def copy_ceiling(dsn: str) -> dict[str, Any]:
    """COPY every row the apply wrote into empty copies of its tables, one connection, indexes included."""
    conn = await asyncpg.connect(dsn)
    try:
        scratch = "copy_" + uuid.uuid4().hex[:12]
        await conn.execute(f"CREATE SCHEMA {scratch}")
        try:
            data: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = {}
            for table, select in COPIED.items():
                # identity columns are copied as values (the apply generated them)
                await conn.execute(f"CREATE TABLE {scratch}.{table} (LIKE {table} INCLUDING INDEXES)")
                records = await conn.fetch(select)
                columns = list(records[0].keys()) if records else []
                data[table] = (columns, [tuple(r) for r in records])
            rows = sum(len(r) for _, r in data.values())
            started = time.perf_counter()
            for table, (columns, records) in data.items():
                if records:
                    await conn.copy_records_to_table(table, schema_name=scratch, records=records, columns=columns)
            seconds = time.perf_counter() - started
        finally:
            await conn.execute(f"DROP SCHEMA {scratch} CASCADE")
    finally:
        await conn.close()
    return {"seconds": seconds, "rows": rows}


async def sqlite_ceiling(data: Path) -> dict[str, Any]:
    """The SQLite analog of the COPY ceiling: the rows the apply wrote, inserted with executemany
    into an empty ledger (same schema and indexes, WAL, synchronous=FULL) in one transaction."""
    scratch = data / "ceiling"
    scratch.mkdir()
    storage = make_storage(None, DataDir(scratch))
    await storage.open(now_ms())  # the schema, migrated as the real one
    await storage.close()
    source = sqlite3.connect(data / "cloud.sqlite3")
    target = sqlite3.connect(scratch / "cloud.sqlite3", isolation_level=None)
    try:
        target.execute("PRAGMA synchronous = FULL")
        target.execute("PRAGMA foreign_keys = OFF")  # brands and stores are not copied
        data_rows = {}
        for table, select in COPIED.items():
            cursor = source.execute(select)
            data_rows[table] = ([d[0] for d in cursor.description], cursor.fetchall())
        rows = sum(len(r) for _, r in data_rows.values())
        started = time.perf_counter()
        target.execute("BEGIN IMMEDIATE")
        for table, (columns, records) in data_rows.items():
            marks = ", ".join("?" for _ in columns)
            target.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", records)
        target.execute("COMMIT")
        seconds = time.perf_counter() - started
    finally:
        source.close()
        target.close()
    return {"seconds": seconds, "rows": rows}


# ---- idle ack latency through a real serve process


async def ack_latency(root: Path, backend: str, pg_dsn: str, samples: int, limit: float,
                      separate_worker: bool = False) -> dict[str, Any]:
    label = f"latency-{backend}{'-separate' if separate_worker else ''}"
    async with fresh_ledger(root, backend, pg_dsn, label) as ledger:
        key = create_key(ledger.data / "cloud.key")
        store = SimStore("lat-store", "lat-brand", Ed25519PrivateKey.generate())
        storage = ledger.storage()
        await storage.open(now_ms())
        await storage.add_brand("lat-brand", "Latency", now_ms())
        await storage.set_program("lat-brand", "Latency", 1, 100, now_ms())
        await storage.add_store(store.store_id, store.brand_id, public_bytes(store.key.public_key()), now_ms())
        await storage.close()
        dsn = ["--dsn", ledger.dsn] if ledger.dsn else []
        serve_args = [str(VENV_BIN / "loyalty-cloud"), "serve", "--data", str(ledger.data), "--port", "0", *dsn]
        procs = []
        if separate_worker:
            serve_args += ["--workers", "0"]
            procs.append(await asyncio.create_subprocess_exec(
                str(VENV_BIN / "loyalty-cloud"), "reconcile", "--data", str(ledger.data), *dsn,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        serve = await asyncio.create_subprocess_exec(*serve_args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        procs.append(serve)
        try:
            assert serve.stdout is not None
            url = (await asyncio.wait_for(serve.stdout.readline(), 60)).decode().split()[-1]
            return await _time_acks(url, store, key, samples, limit)
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                await asyncio.wait_for(p.wait(), 60)


async def _time_acks(url: str, store: SimStore, key: CloudKey, samples: int, limit: float) -> dict[str, Any]:
    terminal = str(uuid.uuid4())
    cid = str(uuid.uuid4())
    times: list[float] = []
    answered_202 = 0
    deadline = time.monotonic() + limit
    async with aiohttp.ClientSession() as session:
        for n in range(samples + 5):  # the first five warm up
            if time.monotonic() > deadline:
                break
            at = now_ms()
            op: Op
            if n == 0:
                op = Enroll(op_id=uuid7(at), at=at, terminal_id=terminal, customer_id=cid, name="Lat", phone=None,
                            email=None, card_code="LATENCY1", consent=Consent(True, (), "pos", None, at))
            else:
                op = Earn(op_id=uuid7(at), at=at, terminal_id=terminal, customer_id=cid, sale_id=f"s{n}", amount=500,
                          points=5, program_version=1)
            batch = Batch(store_id=store.store_id, node_id=store.node_id, key_id=key_id_for(store.key.public_key()),
                          seq=store.seq + 1, prev_hash=store.prev, at=at, ops=(op,))
            envelope, digest = seal_batch(batch, store.key)
            started = time.perf_counter()
            while True:
                async with session.post(f"{url}/v1/batches", data=envelope,
                                        headers={"Content-Type": "application/x-msgpack"}) as resp:
                    body = await resp.read()
                if resp.status == 200:
                    break
                if resp.status != 202 or time.monotonic() > deadline:
                    raise RuntimeError(f"batch {store.seq + 1}: HTTP {resp.status} {body[:200]!r}")
                answered_202 += 1
                await asyncio.sleep(json.loads(body)["error"]["retry_after_ms"] / 1000)
            elapsed = time.perf_counter() - started
            ack = open_ack(body, load_public_key(public_bytes(key.public)))
            assert ack.batch_hash == digest
            store.seq, store.prev = store.seq + 1, digest
            if n >= 5:
                times.append(elapsed * 1000)
    times.sort()
    return {"samples": len(times), "p50_ms": round(statistics.median(times), 1),
            "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 1),
            "max_ms": round(times[-1], 1), "answered_202": answered_202}


# ---- the run


async def apply_config(root: Path, backend: str, pg_dsn: str, workload: Workload, n_customers: int, workers: int,
                       limit: float, with_copy: bool) -> dict[str, Any]:
    label = f"apply-{backend}-{workers}"
    async with fresh_ledger(root, backend, pg_dsn, label) as ledger:
        key = create_key(ledger.data / "cloud.key")
        seed = (ledger.data / "cloud.key").read_bytes()
        receive_s = await fill_inbox(ledger, key, workload, n_customers)
        result = await asyncio.to_thread(apply_with_workers, ledger, seed, workers, limit)
        result.update(await verify(ledger, workload))
        result.update({"backend": backend, "workers": workers, "ops": workload.ops, "receive_s": round(receive_s, 2),
                       "ops_per_s": round(workload.ops / result["seconds"])})
        result["seconds"] = round(result["seconds"], 2)
        if with_copy:
            copy = await (copy_ceiling(ledger.dsn) if ledger.dsn is not None else sqlite_ceiling(ledger.data))
            result["copy"] = {"rows": copy["rows"], "seconds": round(copy["seconds"], 2),
                              "ops_per_s": round(workload.ops / copy["seconds"])}
        return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="cloud-bench-"))
    try:
        started = time.perf_counter()
        workload = make_workload(args.stores, args.brands, args.batches, args.ops, args.customers)
        out: dict[str, Any] = {"stores": args.stores, "brands": args.brands, "batches_per_store": args.batches,
                               "ops_per_batch": args.ops, "customers_per_store": args.customers,
                               "ops": workload.ops, "cpus": os.cpu_count(),
                               "workload_s": round(time.perf_counter() - started, 1), "apply": [], "latency": []}
        for backend in args.backends:
            for workers in args.workers:
                result = await apply_config(root, backend, args.pg_dsn, workload, args.customers, workers,
                                            args.limit, with_copy=workers == args.workers[-1])
                out["apply"].append(result)
                print(f"  {backend:8} {workers} worker(s): {result['ops_per_s']:>7,} ops/s", file=sys.stderr)
        for backend in args.backends:
            out["latency"].append({"backend": backend, "worker": "embedded",
                                   **await ack_latency(root, backend, args.pg_dsn, args.samples, args.limit)})
            out["latency"].append({"backend": backend, "worker": "separate process",
                                   **await ack_latency(root, backend, args.pg_dsn, args.samples, args.limit, True)})
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def report(r: dict[str, Any]) -> None:
    lines = [f"cloud apply: {r['stores']} stores ({r['brands']} brand(s), {r['customers_per_store']:,} customers"
             f" each to start with), {r['batches_per_store']} batches of {r['ops_per_batch']:,} ops each ="
             f" {r['ops']:,} ops; {r['cpus']} CPUs",
             f"  {'backend':10} {'workers':>7} {'seconds':>8} {'ops/s':>9} {'conflicts':>9} {'worker CPU':>10}"
             "  batches per worker"]
    for a in r["apply"]:
        lines.append(f"  {a['backend']:10} {a['workers']:>7} {a['seconds']:>8.2f} {a['ops_per_s']:>9,}"
                     f" {a['conflicts']:>9,} {a['worker_cpu_s']:>9.1f}s  {a['batches_per_worker']}")
        if "copy" in a:
            c = a["copy"]
            share = 100 * a["ops_per_s"] / c["ops_per_s"]
            label = "COPY" if a["backend"] == "postgres" else "INSERT"
            lines.append(f"  {label:10} {'':>7} {c['seconds']:>8.2f} {c['ops_per_s']:>9,}"
                         f"  ({c['rows']:,} rows; {a['workers']} workers reach {share:.0f} % of it)")
    lines.append("  (worker CPU: seconds of CPU the reconciler processes used, their Python work; the database's"
                 " own is not in it)")
    lines.append("idle ack latency (one-op batches, POST to verified ack, HTTP on 127.0.0.1):")
    for lat in r["latency"]:
        lines.append(f"  {lat['backend']:10} {lat['worker']:17} p50 {lat['p50_ms']:>6.1f} ms  p99 {lat['p99_ms']:>6.1f}"
                     f" ms  max {lat['max_ms']:>6.1f} ms  ({lat['samples']} batches, {lat['answered_202']} got 202)")
    print("\n".join(lines))
    print("BENCH_JSON " + json.dumps(r, sort_keys=True))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stores", type=int, default=100)
    parser.add_argument("--brands", type=int, default=1)
    parser.add_argument("--batches", type=int, default=3, help="batches per store")
    parser.add_argument("--ops", type=int, default=1000, help="ops per batch")
    parser.add_argument("--customers", type=int, default=5000, help="customers each store has before the run")
    parser.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    parser.add_argument("--backends", type=lambda s: s.split(","), default=["postgres", "sqlite"])
    parser.add_argument("--samples", type=int, default=300, help="batches timed for the ack latency")
    parser.add_argument("--limit", type=float, default=600.0, help="seconds any one step may take")
    parser.add_argument("--pg-dsn", default=os.environ.get("LOYALTY_BENCH_PG_DSN", DEFAULT_PG))
    args = parser.parse_args(argv)
    report(asyncio.run(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
