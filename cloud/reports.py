"""The merchant's and operator's reports, one definition for the CLI and the admin API.

A report covers whole UTC days, ``from`` to ``to`` inclusive (at most
``MAX_DAYS``; by default the last 30 days), of one brand, and comes as JSON
(columns and one object per row) or CSV (a header line, then the rows).
Points are signed as in the ledger unless the column says otherwise; values
are in minor units through the program's current ``point_value`` (empty when
the program gives points none).

- ``enrollment``: customers enrolled per store and channel (consent source);
- ``activity``: per period, customers who earned or redeemed, and visits (earns
  that moved points: a sale that earned nothing is not counted);
- ``points``: per period, points earned (signup bonuses included), redeemed,
  expired, adjusted (at the till or by an operator), reversed (voids and
  refunds, both ways) and of any other kind, and the net change of the
  liability;
- ``liability``: the periodic job's daily snapshots (brand total first, then
  each store: the sum of the ledger entries its ops made);
- ``conflicts``: per store, refused offline debits and what they lost the
  merchant: the points asked for beyond what the customer had, and their value;
- ``stores``: each store's chain heads (received, applied) and last contact.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from protocol.program_settings import PointValue

from .errors import ConfigError, NotFound
from .periodic import SILENT_HOURS
from .sql import PERIODS
from .storage import Storage

EPOCH = dt.date(1970, 1, 1)
DEFAULT_DAYS = 30
MAX_DAYS = 400
DAY_MS = 86_400_000
PARAMS = frozenset({"from", "to", "period"})


@dataclass(frozen=True, slots=True)
class ReportQuery:
    brand_id: str
    first_day: dt.date
    last_day: dt.date
    period: str
    now: int

    @property
    def start(self) -> int:
        return _ms(self.first_day)

    @property
    def end(self) -> int:
        """Exclusive: midnight after ``last_day``."""
        return _ms(self.last_day) + DAY_MS

    @property
    def month_starts(self) -> list[int]:
        """The first instant of every month the range touches."""
        starts = []
        month = self.first_day.replace(day=1)
        while month <= self.last_day:
            starts.append(_ms(month))
            month = (month + dt.timedelta(days=32)).replace(day=1)
        return starts

    def label(self, key: int) -> str:
        """The first day of the period ``key`` names (``sql.Dialect.period_key``)."""
        if self.period == "month":
            return f"{key // 12:04d}-{key % 12 + 1:02d}-01"
        days = key if self.period == "day" else 7 * key - 3
        return (EPOCH + dt.timedelta(days=days)).isoformat()

    def label_of_day(self, day: int) -> str:
        """The first day of the period holding ``day`` (days since 1970)."""
        date = EPOCH + dt.timedelta(days=day)
        if self.period == "month":
            return date.replace(day=1).isoformat()
        if self.period == "week":
            return (date - dt.timedelta(days=date.weekday())).isoformat()
        return date.isoformat()


@dataclass(frozen=True, slots=True)
class Report:
    name: str
    query: ReportQuery
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]

    def to_json(self) -> dict[str, Any]:
        return {
            "report": self.name,
            "brand_id": self.query.brand_id,
            "from": self.query.first_day.isoformat(),
            "to": self.query.last_day.isoformat(),
            "period": self.query.period,
            "columns": list(self.columns),
            "rows": [dict(zip(self.columns, row, strict=True)) for row in self.rows],
        }

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows(["" if v is None else v for v in row] for row in self.rows)
        return buffer.getvalue()


def _ms(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()) * 1000


def _day(field: str, text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"{field} must be a date, YYYY-MM-DD", field=field) from exc


def parse_query(brand_id: str, params: Mapping[str, str], now: int) -> ReportQuery:
    """The report's range and period from ``from``, ``to`` (dates) and ``period``; ConfigError naming the field."""
    for name in params:
        if name not in PARAMS:
            raise ConfigError(f"unknown parameter {name!r}", field=name, code="unknown_field")
    today = dt.datetime.fromtimestamp(now / 1000, dt.UTC).date()
    last = _day("to", params["to"]) if "to" in params else today
    first = _day("from", params["from"]) if "from" in params else last - dt.timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        raise ConfigError("from must not be after to", field="from")
    if (last - first).days + 1 > MAX_DAYS:
        raise ConfigError(f"a report covers at most {MAX_DAYS} days", field="from")
    period = params.get("period", "day")
    if period not in PERIODS:
        raise ConfigError(f"period must be one of {', '.join(PERIODS)}", field="period")
    return ReportQuery(brand_id, first, last, period, now)


async def _point_value(storage: Storage, brand_id: str) -> PointValue | None:
    program = await storage.current_program(brand_id)
    return None if program is None else program.options.value_of_a_point


def _value(point_value: PointValue | None, points: int) -> int | None:
    return None if point_value is None else point_value.of(points)


async def enrollment(storage: Storage, q: ReportQuery) -> Report:
    rows = await storage.report_enrollment(q.brand_id, q.start, q.end)
    return Report("enrollment", q, ("store_id", "source", "enrolled"), [tuple(r) for r in rows])


async def activity(storage: Storage, q: ReportQuery) -> Report:
    rows = await storage.report_activity(q.brand_id, q.start, q.end, q.period, q.month_starts)
    return Report("activity", q, ("period", "active_customers", "visits"),
                  [(q.label(r[0]), r[1], int(r[2])) for r in rows])


#: Ledger entry kinds by report column; any kind not named here counts as ``other``.
_KIND_COLUMNS = {"earn": "earned", "signup_bonus": "earned", "redeem": "redeemed", "expire": "expired",
                 "adjust": "adjusted", "void_earn": "reversed", "void_redeem": "reversed",
                 "refund_earn": "reversed", "refund_redeem": "reversed"}
_POINT_COLUMNS = ("earned", "redeemed", "expired", "adjusted", "reversed", "other")
#: Debits are shown as positive amounts in their own columns.
_SIGN = {"redeemed": -1, "expired": -1}


async def points(storage: Storage, q: ReportQuery) -> Report:
    sums: dict[str, dict[str, int]] = {}
    for day, kind, total, _count in await storage.report_points(q.brand_id, q.start, q.end):
        column = _KIND_COLUMNS.get(kind, "other")
        row = sums.setdefault(q.label_of_day(day), dict.fromkeys((*_POINT_COLUMNS, "net"), 0))
        row[column] += _SIGN.get(column, 1) * total
        row["net"] += total
    columns = ("period", *_POINT_COLUMNS, "net")
    return Report("points", q, columns, [(p, *(sums[p][c] for c in columns[1:])) for p in sorted(sums)])


async def liability(storage: Storage, q: ReportQuery) -> Report:
    rows = await storage.liability_snapshots(q.brand_id, q.first_day.isoformat(), q.last_day.isoformat())
    return Report("liability", q, ("day", "store_id", "points", "value", "taken_at"),
                  [(r.day, r.store_id, r.points, r.value, r.taken_at) for r in rows])


async def conflicts(storage: Storage, q: ReportQuery) -> Report:
    point_value = await _point_value(storage, q.brand_id)
    rows = await storage.report_conflicts(q.brand_id, q.start, q.end)
    return Report("conflicts", q, ("store_id", "conflicts", "points_requested", "points_lost", "value_lost"),
                  [(store, count, asked, lost, _value(point_value, lost)) for store, count, asked, lost in rows])


async def stores(storage: Storage, q: ReportQuery) -> Report:
    limit_ms = int(SILENT_HOURS * 3_600_000)
    rows = [
        (s.store_id, s.applied_seq, s.received_seq, s.last_batch_at, s.last_pull_at,
         q.now - s.silent_since() > limit_ms)
        for s in await storage.list_store_sync(q.brand_id)
    ]
    return Report("stores", q, ("store_id", "applied_seq", "received_seq", "last_batch_at", "last_pull_at",
                                f"silent_{SILENT_HOURS:g}h"), rows)


REPORTS: dict[str, Callable[[Storage, ReportQuery], Awaitable[Report]]] = {
    "enrollment": enrollment,
    "activity": activity,
    "points": points,
    "liability": liability,
    "conflicts": conflicts,
    "stores": stores,
}


async def run_report(storage: Storage, name: str, q: ReportQuery) -> Report:
    """The report ``name`` for ``q``; NotFound for an unknown report or brand."""
    make = REPORTS.get(name)
    if make is None:
        raise NotFound(f"no report {name!r} (reports: {', '.join(REPORTS)})", field="report")
    if not any(b.brand_id == q.brand_id for b in await storage.list_brands()):
        raise NotFound(f"no brand {q.brand_id!r}", field="brand_id")
    return await make(storage, q)
