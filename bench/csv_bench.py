"""Merchant CSV files at their bound: 100,000 rows on SQLite and PostgreSQL.

    .venv/bin/python bench/csv_bench.py [--rows 100000] [--seconds 300] [--pg-dsn URL]

On each backend, through the storage the CLI and the admin API use (a fresh
SQLite file; a PostgreSQL schema of its own, dropped afterwards): parse a
balance import of ``--rows`` new customers (name, phone, email, card code,
balance, email consent), apply it (every row enrolled, one transaction),
refuse the same rows again, parse and apply a bulk adjustment of every one
of them (matched by card code), export every balance with contacts, and
pull the first downlink page. Each step is bounded by ``--seconds``. Prints
a table and one ``BENCH_JSON`` line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from cloud import csv_rows  # noqa: E402
from cloud.csv_rows import Kind, export_text, parse  # noqa: E402
from cloud.errors import Refused  # noqa: E402
from cloud.pg_storage import PgStorage  # noqa: E402
from cloud.sqlite_storage import SQLiteStorage  # noqa: E402
from cloud.storage import Storage  # noqa: E402

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
BRAND = "bench"
T = TypeVar("T")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def import_file(n: int) -> bytes:
    lines = ["customer_code,name,phone,email,balance,consent_email"]
    lines += [f"C{i:08d},Customer {i},+3361{i:08d},c{i}@example.com,{i % 500},{'yes' if i % 3 else 'no'}"
              for i in range(n)]
    return ("\n".join(lines) + "\n").encode()


def adjust_file(n: int) -> bytes:
    lines = ["customer_code,points,reason"] + [f"C{i:08d},{1 + i % 7},spring bonus" for i in range(n)]
    return ("\n".join(lines) + "\n").encode()


async def timed(limit_s: float, step: Callable[[], Awaitable[T]]) -> tuple[float, T]:
    started = time.perf_counter()
    result = await asyncio.wait_for(step(), timeout=limit_s)
    return (time.perf_counter() - started) * 1000, result


async def parsed(kind: Kind, data: bytes) -> csv_rows.CsvFile:
    return parse(kind, data)


async def refused(storage: Storage, file: csv_rows.CsvFile) -> str:
    try:
        await storage.apply_csv(BRAND, file, "bench", now_ms())
    except Refused as exc:
        return exc.code or ""
    raise AssertionError("the same rows were applied twice")


async def bench(name: str, storage: Storage, rows: int, limit_s: float) -> dict[str, Any]:
    out: dict[str, Any] = {"backend": name}
    await storage.open(now_ms())
    try:
        await storage.add_brand(BRAND, "Bench", now_ms())
        await storage.set_program(BRAND, "Bench", 1, 100, now_ms())
        data = import_file(rows)
        out["file_mb"] = round(len(data) / 2**20, 1)
        out["parse_import_ms"], file = await timed(limit_s, lambda: parsed(Kind.IMPORT, data))
        out["import_ms"], result = await timed(limit_s, lambda: storage.apply_csv(BRAND, file, "bench", now_ms()))
        assert result.created == rows, result
        out["refuse_again_ms"], code = await timed(limit_s, lambda: refused(storage, file))
        assert code == "file_already_applied"
        adjust = adjust_file(rows)
        out["parse_adjust_ms"], afile = await timed(limit_s, lambda: parsed(Kind.ADJUST, adjust))
        out["adjust_ms"], aresult = await timed(limit_s, lambda: storage.apply_csv(BRAND, afile, "bench",
                                                                                   now_ms()))
        assert aresult.changed == rows, aresult
        out["export_read_ms"], exported = await timed(limit_s, lambda: storage.export_balances(BRAND))
        started = time.perf_counter()
        text = export_text(exported, True)
        out["export_render_ms"] = (time.perf_counter() - started) * 1000
        assert text.count("\n") == rows + 1
        out["pull_page_ms"], page = await timed(limit_s, lambda: storage.downlink_page(BRAND, 0, 1000))
        assert len(page.customers) == 1000
        out["audit_ms"], mismatches = await timed(limit_s, storage.audit_balances)
        assert mismatches == []
    finally:
        await storage.close()
    out["import_rows_per_s"] = round(rows / (out["import_ms"] / 1000))
    out["adjust_rows_per_s"] = round(rows / (out["adjust_ms"] / 1000))
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        results.append(await bench("sqlite", SQLiteStorage(Path(tmp) / "cloud.sqlite3"), args.rows, args.seconds))
    schema = "csvbench_" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(args.pg_dsn)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        dsn = f"{args.pg_dsn}{'&' if '?' in args.pg_dsn else '?'}search_path={schema}"
        results.append(await bench("postgres", PgStorage(dsn), args.rows, args.seconds))
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=csv_rows.MAX_ROWS, help=f"at most {csv_rows.MAX_ROWS}")
    parser.add_argument("--seconds", type=float, default=300.0, help="time limit of each step")
    parser.add_argument("--pg-dsn", default=os.environ.get("LOYALTY_BENCH_PG_DSN", DEFAULT_PG))
    args = parser.parse_args()
    if not 1_000 <= args.rows <= csv_rows.MAX_ROWS:
        parser.error(f"--rows must be 1000..{csv_rows.MAX_ROWS}")
    results = asyncio.run(run(args))
    steps = [k for k in results[0] if k.endswith("_ms")]
    print(f"merchant CSV, {args.rows:,} rows ({results[0]['file_mb']} MB import file), {os.cpu_count()} CPUs")
    print(f"  {'step':18}" + "".join(f"{r['backend']:>12}" for r in results))
    for step in steps:
        print(f"  {step:18}" + "".join(f"{r[step]:>12,.0f}" for r in results))
    for rate in ("import_rows_per_s", "adjust_rows_per_s"):
        print(f"  {rate:18}" + "".join(f"{r[rate]:>12,}" for r in results))
    print("BENCH_JSON " + json.dumps({"csv": results}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
