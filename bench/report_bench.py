"""Reports on 10 million ledger entries (PostgreSQL): timings and plans.

Run with ``bench/cloud_run --reports``. Prints a table, the plan of each
report's query, and one line ``BENCH_JSON {...}``.

In a schema of its own (dropped afterwards), the ledger's tables are made by
the real migrations, then filled server side (generate_series): one chain of
``--chain-stores`` stores holding ``--chain-share`` of ``--entries`` ledger
entries, and ``--small-brands`` brands of 20 stores sharing the rest, over
``--days`` days in the order they happened (a ledger is appended to as time
passes); customers (with their consent source) and conflicts in proportion;
VACUUM ANALYZE. Every report then runs through the storage, as the
admin API runs it, for the chain: 31 days by day and 365 days by month
(median of ``--repeats``), followed by the periodic job's two full scans
(the balance audit and the liability snapshot). Every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from cloud.pg_storage import PgStorage  # noqa: E402
from cloud.reports import ReportQuery, run_report  # noqa: E402
from cloud.sql import POSTGRES  # noqa: E402

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
DAY_MS = 86_400_000
CHAIN = "chain"
KINDS = "ARRAY['earn','earn','earn','earn','earn','earn','earn','earn','earn','earn','redeem','redeem','redeem'," \
        "'adjust','void_earn','expire']"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def generate(conn: asyncpg.Connection, args: argparse.Namespace, end_ms: int) -> dict[str, float]:
    """Fill the schema; the seconds each table took."""
    start_ms = end_ms - args.days * DAY_MS
    groups = [(CHAIN, args.chain_stores, int(args.entries * args.chain_share))]
    rest = args.entries - groups[0][2]
    groups += [(f"small-{i}", 20, rest // args.small_brands) for i in range(args.small_brands)]
    took: dict[str, float] = {}
    started = time.perf_counter()
    for brand, stores, _ in groups:
        await conn.execute("INSERT INTO brands VALUES ($1, $1, $2)", brand, start_ms)
        await conn.execute("INSERT INTO brand_counters VALUES ($1, 0)", brand)
        await conn.execute("INSERT INTO programs (brand_id, version, name, points_per_unit, unit_amount, settings,"
                           " created_at) VALUES ($1, 1, 'P', 1, 100, $2, $3)", brand,
                           json.dumps({"point_value": {"amount": 1, "points": 1}}), start_ms)
        await conn.execute(
            "INSERT INTO stores SELECT $1 || '-' || lpad(n::text, 3, '0'), $1, 0, '\\x00'::bytea, $2"
            " FROM generate_series(0, $3 - 1) n", brand, start_ms, stores)
        await conn.execute(
            "INSERT INTO store_sync SELECT store_id, 0, '\\x00'::bytea, $2 - (random() * 3 * $3)::bigint, NULL"
            " FROM stores WHERE brand_id = $1", brand, end_ms, DAY_MS)
    took["brands and stores"] = time.perf_counter() - started
    for table, sql in (
        ("customers", """INSERT INTO customers SELECT
              $1 || '-c' || n, $1, 'Customer', NULL, NULL, 'CARD' || n,
              '{"terms_accepted":true,"channels":[],"source":"'
                || (ARRAY['pos','kiosk','portal','qr','import'])[1 + n % 5] || '","staff":null,"at":0}',
              0, n, $1 || '-' || lpad((n % $3)::text, 3, '0'),
              $4 + n::bigint * ($5::bigint * 86400000) / ($2 + 1), 0
            FROM generate_series(1, $2) n"""),
        ("ledger_entries", f"""INSERT INTO ledger_entries (customer_id, op_id, store_id, sale_id, kind, points, at)
            SELECT $1 || '-c' || (1 + n % $6), $1 || '-op-' || n, $1 || '-' || lpad((n % $3)::text, 3, '0'),
              'sale-' || n, ({KINDS})[1 + n % 16],
              CASE WHEN n % 16 < 10 THEN 1 + n % 50 WHEN n % 16 = 13 THEN 5 - n % 11 ELSE -(1 + n % 30) END,
              $4 + n::bigint * ($5::bigint * 86400000) / ($2 + 1)
            FROM generate_series(1, $2) n"""),
        ("conflicts", """INSERT INTO conflicts (store_id, terminal_id, customer_id, op_id, kind, points_requested,
              balance_available, at, created_at)
            SELECT $1 || '-' || lpad((n % $3)::text, 3, '0'), 't', $1 || '-c' || n, $1 || '-x-' || n, 'redeem',
              10 + n % 90, n % 40 - 5, $4 + n::bigint * ($5::bigint * 86400000) / ($2 + 1), 0
            FROM generate_series(1, $2) n"""),
    ):
        started = time.perf_counter()
        for brand, stores, entries in groups:
            count = {"customers": entries // 20, "ledger_entries": entries, "conflicts": entries // 100}[table]
            params: list[Any] = [brand, count, stores, start_ms, args.days]
            if table == "ledger_entries":
                params.append(max(1, entries // 20))
            await conn.execute(sql, *params)
        took[table] = time.perf_counter() - started
    started = time.perf_counter()
    await conn.execute("VACUUM ANALYZE")  # the steady state autovacuum keeps: visibility map set, statistics fresh
    took["vacuum analyze"] = time.perf_counter() - started
    return took


async def timed(repeats: int, call: Any) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = await call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000, result


async def plan_of(conn: asyncpg.Connection, sql: str, args: list[Any]) -> list[str]:
    rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *args)
    return [r[0] for r in rows]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    schema = args.keep or "reports_" + uuid.uuid4().hex[:12]
    dsn = f"{args.pg_dsn}{'&' if '?' in args.pg_dsn else '?'}search_path={schema}"
    admin = await asyncpg.connect(args.pg_dsn)
    fresh = not await admin.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema)
    if fresh:
        await admin.execute(f"CREATE SCHEMA {schema}")
    statements: list[str] = []
    storage = PgStorage(dsn, on_query=statements.append, max_size=2)
    out: dict[str, Any] = {"entries": args.entries, "days": args.days, "chain_stores": args.chain_stores,
                           "cpus": os.cpu_count(), "reports": []}
    try:
        end_ms = now_ms()
        await storage.open(end_ms)
        conn = await asyncpg.connect(dsn)
        try:
            if fresh:
                out["generate_s"] = {k: round(v, 1) for k, v in (await generate(conn, args, end_ms)).items()}
            else:
                out["generate_s"] = {"kept schema": 0.0}
                end_ms = await conn.fetchval("SELECT MAX(at) + 1 FROM ledger_entries")
            out["chain_entries"] = await conn.fetchval("SELECT COUNT(*) FROM ledger_entries WHERE store_id LIKE"
                                                       " 'chain-%'")
            out["table_mb"] = round(await conn.fetchval("SELECT pg_total_relation_size('ledger_entries')") / 2**20)
            today = dt.datetime.fromtimestamp(end_ms / 1000, dt.UTC).date()
            ranges = [("31 days", today - dt.timedelta(days=30), "day"),
                      ("365 days", today - dt.timedelta(days=364), "month")]
            for name in ("enrollment", "activity", "points", "conflicts", "stores"):
                for label, first, period in ranges:
                    if name == "stores" and label != ranges[0][0]:
                        continue
                    query = ReportQuery(CHAIN, first, today, period, end_ms)
                    statements.clear()
                    ms, report = await timed(args.repeats, lambda q=query, n=name: run_report(storage, n, q))
                    sql = next(s for s in reversed(statements) if "GROUP BY" in s or "store_sync" in s)
                    params: list[Any] = [CHAIN] if name == "stores" else [CHAIN, query.start, query.end]
                    if name == "activity":
                        params += POSTGRES.period_key("at", period, 4, query.month_starts)[1]
                    plan = await plan_of(conn, sql, params)
                    out["reports"].append({"report": name, "range": label, "period": period,
                                           "rows": len(report.rows), "median_ms": round(ms, 1), "plan": plan})
            ms, _ = await timed(1, storage.audit_balances)
            out["audit_balances_ms"] = round(ms)
            ms, _ = await timed(1, lambda: storage.take_liability_snapshot(today.isoformat(), end_ms))
            out["liability_snapshot_ms"] = round(ms)
        finally:
            await conn.close()
    finally:
        await storage.close()
        if args.keep is None:
            await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()
    return out


def report(r: dict[str, Any]) -> None:
    lines = [f"reports on {r['entries']:,} ledger entries over {r['days']} days ({r['table_mb']:,} MB with indexes);"
             f" the chain: {r['chain_stores']} stores, {r['chain_entries']:,} entries; {r['cpus']} CPUs",
             "  generated in " + ", ".join(f"{k} {v} s" for k, v in r["generate_s"].items()),
             f"  {'report':12} {'range':9} {'period':6} {'rows':>5} {'median ms':>10}"]
    for rep in r["reports"]:
        lines.append(f"  {rep['report']:12} {rep['range']:9} {rep['period']:6} {rep['rows']:>5}"
                     f" {rep['median_ms']:>10.1f}")
    lines.append(f"  periodic job: balance audit {r['audit_balances_ms']:,} ms,"
                 f" liability snapshot {r['liability_snapshot_ms']:,} ms (full scans)")
    for rep in r["reports"]:
        lines.append(f"\nplan: {rep['report']}, {rep['range']} by {rep['period']}")
        lines += [f"  {line[:160]}" for line in rep["plan"]]
    print("\n".join(lines))
    print("BENCH_JSON " + json.dumps({k: v for k, v in r.items()}, sort_keys=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--chain-stores", type=int, default=200)
    parser.add_argument("--chain-share", type=float, default=0.8)
    parser.add_argument("--small-brands", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pg-dsn", default=os.environ.get("LOYALTY_BENCH_PG_DSN", DEFAULT_PG))
    parser.add_argument("--keep", default=None, metavar="SCHEMA",
                        help="fill (once) and keep this schema instead of a throwaway one, to look at plans")
    args = parser.parse_args()
    report(asyncio.run(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
