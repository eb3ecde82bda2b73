"""One SQL text for both ledger backends, where the dialects agree.

Most of the ledger's statements are the same in SQLite and PostgreSQL but
for their placeholders. They are written once, PostgreSQL style (``$1``),
and a ``Session`` runs them on either backend: SQLite binds ``?1`` by the
same numbers, so the translation is a rename. Where the dialects differ
(a list parameter, a row lock), a ``Dialect`` gives the fragment.

The batch path keeps its per-backend SQL (``sqlite_storage``, ``pg_storage``):
that is where the locks and bulk writes differ for real.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Row = tuple[Any, ...]

_PLACEHOLDER = re.compile(r"\$(\d+)")
#: Report periods.
PERIODS = ("day", "week", "month")
DAY_MS = 86_400_000


@functools.lru_cache(maxsize=512)
def to_sqlite(sql: str) -> str:
    """``$1`` placeholders as SQLite's numbered ``?1``."""
    return _PLACEHOLDER.sub(r"?\1", sql)


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str

    @property
    def sqlite(self) -> bool:
        return self.name == "sqlite"

    def any_of(self, column: str, n: int) -> str:
        """``column`` is one of the strings in parameter ``$n`` (pass ``self.strings(...)``)."""
        if self.sqlite:
            return f"{column} IN (SELECT value FROM json_each(${n}))"
        return f"{column} = ANY(${n}::text[])"

    def strings(self, values: Sequence[str]) -> Any:
        """A list parameter for :meth:`any_of`."""
        return json.dumps(list(values)) if self.sqlite else list(values)

    def json_text(self, column: str, key: str) -> str:
        """The text of ``key`` in the JSON object held (as text) by ``column``."""
        if self.sqlite:
            return f"json_extract({column}, '$.{key}')"
        return f"(CAST({column} AS json) ->> '{key}')"

    def period_key(self, column_ms: str, period: str, n: int, month_starts: Sequence[int]) -> tuple[str, list[Any]]:
        """An integer naming the UTC period (day; week, from Monday; month) that holds the time
        ``column_ms`` (milliseconds), and the parameters it takes from ``$n`` on. Integer
        arithmetic where it can be (a per-row date function costs several times the scan):
        day = days since 1970-01-01, week = Mondays since then (1970-01-05 is week 1),
        month = year * 12 + month - 1; PostgreSQL finds the month by binary search in
        ``month_starts`` (``width_bucket``), the consecutive month starts of the range."""
        day = f"({column_ms} / {DAY_MS})"
        if period == "day":
            return day, []
        if period == "week":
            return f"(({day} + 3) / 7)", []
        if period != "month":
            raise ValueError(f"no period {period!r}")  # callers pass a checked value
        if self.sqlite:
            seconds = f"{column_ms} / 1000, 'unixepoch'"
            return (f"(CAST(strftime('%Y', {seconds}) AS INTEGER) * 12"
                    f" + CAST(strftime('%m', {seconds}) AS INTEGER) - 1)"), []
        first = dt.datetime.fromtimestamp(month_starts[0] / 1000, dt.UTC)
        return f"(width_bucket({column_ms}, ${n}::bigint[]) - 1 + ${n + 1})", [
            list(month_starts), first.year * 12 + first.month - 1]
    def any_int(self, column: str, n: int) -> str:
        """``column`` is one of the integers in parameter ``$n`` (pass ``self.ints(...)``)."""
        if self.sqlite:
            return f"{column} IN (SELECT value FROM json_each(${n}))"
        return f"{column} = ANY(${n}::bigint[])"

    def ints(self, values: Sequence[int]) -> Any:
        """A list parameter for :meth:`any_int`."""
        return json.dumps(list(values)) if self.sqlite else list(values)

    @property
    def for_update(self) -> str:
        """A row lock; SQLite has one writer, so its transactions need none."""
        return "" if self.sqlite else " FOR UPDATE"


SQLITE = Dialect("sqlite")
POSTGRES = Dialect("postgres")


class Session(Protocol):
    """Statements inside one transaction; driver errors leave as ``StoreError``."""

    @property
    def dialect(self) -> Dialect: ...

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        """Rows as tuples; ``sql`` uses ``$n`` placeholders."""
        ...

    async def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run ``sql`` once per row (small administrative writes, not the batch path)."""
        ...


def one(rows: list[Row]) -> Row | None:
    return rows[0] if rows else None
