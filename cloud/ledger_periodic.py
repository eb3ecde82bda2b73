"""The ``Storage`` methods of the periodic job: the integrity audit's reads and
checkpoints, and the liability snapshot. Written once against ``sql.Session``
(``ledger.SqlLedger`` includes them); the checks themselves are in ``periodic``.

Heavy reads run in a read snapshot, never inside the write transaction, so
on SQLite the single writer (and with it every batch) never waits for them.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

from protocol import GENESIS_HASH, Program

from .model import CLOUD_ORIGIN, ChainCheckpoint, LiabilityRow, program_from_row
from .sql import Session

_CURRENT_PROGRAMS = (
    "SELECT p.brand_id, p.version, p.name, p.points_per_unit, p.unit_amount, p.settings FROM programs p"
    " WHERE p.version = (SELECT MAX(q.version) FROM programs q WHERE q.brand_id = p.brand_id)"
)


class PeriodicLedger:
    def _read(self) -> AbstractAsyncContextManager[Session]:
        raise NotImplementedError

    def _write(self) -> AbstractAsyncContextManager[Session]:
        raise NotImplementedError

    # ---- integrity audit of the batch chains

    async def chain_checkpoints(self) -> list[ChainCheckpoint]:
        async with self._read() as q:
            rows = await q.fetch(
                "SELECT s.store_id, s.last_seq, s.last_hash, a.seq, a.hash FROM stores s"
                " LEFT JOIN chain_audits a ON a.store_id = s.store_id ORDER BY s.store_id"
            )
        return [
            ChainCheckpoint(r[0], r[1], bytes(r[2]), r[3] or 0, GENESIS_HASH if r[4] is None else bytes(r[4]))
            for r in rows
        ]

    async def chain_page(self, store_id: str, after_seq: int, limit: int) -> list[tuple[int, bytes, bytes]]:
        """(seq, hash, body) of the store's applied batches after ``after_seq``, in order."""
        async with self._read() as q:
            rows = await q.fetch(
                "SELECT seq, hash, body FROM batches WHERE store_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                store_id, after_seq, limit,
            )
        return [(r[0], bytes(r[1]), bytes(r[2])) for r in rows]

    async def save_chain_checkpoint(self, store_id: str, seq: int, hash_: bytes, now: int) -> None:
        """Checked up to ``seq``; never moves a checkpoint back (two audits at once are harmless)."""
        async with self._write() as q:
            await q.fetch(
                "INSERT INTO chain_audits (store_id, seq, hash, checked_at) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (store_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash,"
                " checked_at = excluded.checked_at WHERE chain_audits.seq < excluded.seq",
                store_id, seq, hash_, now,
            )

    # ---- liability

    async def take_liability_snapshot(self, day: str, now: int) -> list[LiabilityRow]:
        """Outstanding points per brand (the sum of its customers' balances) and per store (the
        sum of the ledger entries its ops made; the entries the cloud made itself, expiry and
        an operator's adjustments, as the store ``model.CLOUD_ORIGIN``), valued with each
        brand's current point_value; replaces the snapshot of ``day``."""
        async with self._read() as q:
            brands = await q.fetch(
                "SELECT b.brand_id, CAST(COALESCE(SUM(c.balance), 0) AS BIGINT) FROM brands b"
                " LEFT JOIN customers c ON c.brand_id = b.brand_id GROUP BY b.brand_id ORDER BY b.brand_id"
            )
            stores = await q.fetch(
                "SELECT s.brand_id, s.store_id, CAST(COALESCE(SUM(e.points), 0) AS BIGINT) FROM stores s"
                " LEFT JOIN ledger_entries e ON e.store_id = s.store_id"
                " GROUP BY s.brand_id, s.store_id ORDER BY s.brand_id, s.store_id"
            )
            # What the cloud did itself (expiry, an operator's adjustment), as one more row of the brand.
            stores += await q.fetch(
                "SELECT c.brand_id, e.store_id, CAST(SUM(e.points) AS BIGINT) FROM ledger_entries e"
                " JOIN customers c ON c.customer_id = e.customer_id WHERE e.store_id = $1"
                " GROUP BY c.brand_id, e.store_id ORDER BY c.brand_id",
                CLOUD_ORIGIN,
            )
            programs = {r[0]: program_from_row(r) for r in await q.fetch(_CURRENT_PROGRAMS)}
        rows = [LiabilityRow(day, b, None, points, _value(programs.get(b), points), now) for b, points in brands]
        rows += [LiabilityRow(day, b, s, points, _value(programs.get(b), points), now) for b, s, points in stores]
        async with self._write() as q:
            await q.fetch("DELETE FROM liability_snapshots WHERE day = $1", day)
            await q.many(
                "INSERT INTO liability_snapshots (day, brand_id, store_id, points, value, taken_at)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                [(r.day, r.brand_id, r.store_id, r.points, r.value, r.taken_at) for r in rows],
            )
        return rows

    async def liability_snapshots(self, brand_id: str, first_day: str, last_day: str) -> list[LiabilityRow]:
        """The brand's snapshots of the days from ``first_day`` to ``last_day`` (inclusive)."""
        async with self._read() as q:
            rows = await q.fetch(
                "SELECT day, brand_id, store_id, points, value, taken_at FROM liability_snapshots"
                " WHERE brand_id = $1 AND day >= $2 AND day <= $3"
                " ORDER BY day, store_id IS NOT NULL, store_id",
                brand_id, first_day, last_day,
            )
        return [LiabilityRow(*r) for r in rows]


def _value(program: Program | None, points: int) -> int | None:
    point_value = None if program is None else program.options.value_of_a_point
    return None if point_value is None else point_value.of(points)
