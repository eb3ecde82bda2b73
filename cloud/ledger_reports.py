"""The ``Storage`` methods behind the reports, written once against ``sql.Session``
(``ledger.SqlLedger`` includes them). Each is one aggregate over a time range
[start, end) of milliseconds, scoped to a brand through its stores, and read
in one snapshot; ``reports`` shapes the rows.

Indexes (migration 0006): ``ledger_entries (store_id, at)`` covering kind,
points and customer_id, ``customers (brand_id, created_at)``,
``conflicts (store_id, at)``; a brand's range is one index range per store.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager

from .model import CLOUD_ORIGIN
from .sql import Row, Session

#: Rows of the brand's stores: ledger entries and conflicts carry the store, not the brand.
_OF_BRAND = "store_id IN (SELECT store_id FROM stores WHERE brand_id = $1) AND at >= $2 AND at < $3"


class ReportLedger:
    def _read(self) -> AbstractAsyncContextManager[Session]:
        raise NotImplementedError

    async def report_enrollment(self, brand_id: str, start: int, end: int) -> list[Row]:
        """(store_id, consent source, customers) of the customers enrolled in the range."""
        async with self._read() as q:
            source = q.dialect.json_text("consent", "source")
            return await q.fetch(
                f"SELECT enrolled_store, {source}, COUNT(*) FROM customers"
                " WHERE brand_id = $1 AND created_at >= $2 AND created_at < $3"
                f" GROUP BY enrolled_store, {source} ORDER BY enrolled_store, {source}",
                brand_id, start, end,
            )

    async def report_activity(
        self, brand_id: str, start: int, end: int, period: str, month_starts: Sequence[int]
    ) -> list[Row]:
        """(period key, customers who earned or redeemed, earns) per period (``sql.Dialect.period_key``)."""
        async with self._read() as q:
            bucket, params = q.dialect.period_key("at", period, 4, month_starts)
            # Customers per period first, then periods: a hash of (period, customer) pairs instead
            # of sorting every entry for COUNT(DISTINCT).
            return await q.fetch(
                "SELECT period, COUNT(*), CAST(SUM(earns) AS BIGINT) FROM ("
                f"SELECT {bucket} AS period, customer_id, SUM(CASE WHEN kind = 'earn' THEN 1 ELSE 0 END) AS earns"
                f" FROM ledger_entries WHERE {_OF_BRAND} AND kind IN ('earn', 'redeem')"
                f" GROUP BY {bucket}, customer_id) AS active GROUP BY period ORDER BY period",
                brand_id, start, end, *params,
            )

    async def report_points(self, brand_id: str, start: int, end: int) -> list[Row]:
        """(day since 1970, entry kind, points, entries) per UTC day and kind (sums: weeks and
        months add up from days), from the brand's stores and then from the entries the cloud
        made itself for the brand's customers (expiry, an operator's adjustment): a (day, kind)
        may come twice, to be added up."""
        async with self._read() as q:
            day = q.dialect.period_key("at", "day", 4, ())[0]
            by_stores = await q.fetch(
                f"SELECT {day}, kind, CAST(SUM(points) AS BIGINT), COUNT(*) FROM ledger_entries"
                f" WHERE {_OF_BRAND} GROUP BY {day}, kind",
                brand_id, start, end,
            )
            entry_day = q.dialect.period_key("e.at", "day", 5, ())[0]
            by_cloud = await q.fetch(
                f"SELECT {entry_day}, e.kind, CAST(SUM(e.points) AS BIGINT), COUNT(*)"
                " FROM ledger_entries e JOIN customers c ON c.customer_id = e.customer_id"
                " WHERE e.store_id = $4 AND c.brand_id = $1 AND e.at >= $2 AND e.at < $3"
                f" GROUP BY {entry_day}, e.kind",
                brand_id, start, end, CLOUD_ORIGIN,
            )
        return by_stores + by_cloud

    async def report_conflicts(self, brand_id: str, start: int, end: int) -> list[Row]:
        """(store_id, conflicts, points requested, points lost) per store: a refused offline debit
        lost the merchant what it asked for over what the customer had (nothing below zero). A second
        claim of a receipt (kind ``claim``) is no debit and lost nothing: it is not counted here."""
        async with self._read() as q:
            return await q.fetch(
                "SELECT store_id, COUNT(*), CAST(SUM(points_requested) AS BIGINT), CAST(SUM(CASE"
                " WHEN balance_available > 0 THEN points_requested - balance_available ELSE points_requested END)"
                f" AS BIGINT) FROM conflicts WHERE {_OF_BRAND} AND kind <> 'claim' GROUP BY store_id"
                " ORDER BY store_id",
                brand_id, start, end,
            )
