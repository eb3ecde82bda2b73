"""The ledger side of merchant CSV files, written once for both backends on ``sql.Session``
(a mixin of ``SQLiteStorage`` and ``PgStorage``, like ``ledger.SqlLedger``).

A file is applied whole in ONE write transaction or not at all: its rows are
matched to the brand's customers (locked, in customer_id order), every row
is checked (all bad rows reported with their line numbers), and only then
is anything written. Locks, in the order every other writer takes them:
on PostgreSQL an advisory lock of the brand's CSV files (two files of one
brand one after the other) and, for an import, the portal's enrollment lock
of the brand (an import and a portal sign-up never both create one phone);
then the customers' rows; the brand's change counter last. Every customer a
file changes or creates takes a new version from that counter, so it goes
down to every edge of the brand with the next pull.

A file's digest (``csv_rows.digest_of``) is recorded in ``csv_files`` in the
same transaction; the same rows applied to the brand again are refused
(``file_already_applied``), so an import never counts twice. Each ledger entry
a file writes has its ``adjustments`` row (reason, actor, operator, balance
after) keyed by the file's digest and line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from protocol import uuid7
from protocol.errors import LocalProtocolError
from protocol.validate import check_text

from .balances import lock_customers, take_versions
from .csv_rows import MAX_ERRORS, AdjustRow, CsvFile, CsvRejected, Ident, ImportRow, Kind, OptOutRow, RowError
from .engagement_model import ConsentRecord
from .errors import ConfigError, NotFound, Refused
from .model import CLOUD_ORIGIN, CustomerState, astuple
from .pg_schema import CUSTOMER, ENTRY, Columns, names
from .sql import Row, Session

log = logging.getLogger(__name__)

#: The ledger entry kind of an imported opening balance (adjustments keep ``adjust``).
IMPORT_KIND = "import"
DEFAULT_IMPORT_REASON = "balance import"
_CSV_LOCK = "loyalty-csv:"
_ENROLL_LOCK = "loyalty-portal-enroll:"  # engagement_store's: the portal's sign-ups of the brand
_COLUMN = {"customer_code": "card_code", "phone": "phone", "email": "email"}
_ADJUSTMENT: Columns = (
    ("op_id", "text"), ("brand_id", "text"), ("customer_id", "text"), ("points", "bigint"), ("reason", "text"),
    ("actor", "text"), ("operator_id", "text"), ("balance_after", "bigint"), ("version", "bigint"), ("at", "bigint"),
    ("csv_digest", "text"), ("csv_line", "bigint"),
)
_CONSENT: Columns = (
    ("brand_id", "text"), ("customer_id", "text"), ("channel", "text"), ("granted", "bool"), ("at", "bigint"),
    ("source", "text"), ("terminal_id", "text"), ("staff", "text"),
)
_UPDATE: Columns = (("balance", "bigint"), ("opted_out", "bool"), ("version", "bigint"), ("updated_at", "bigint"),
                    ("customer_id", "text"))
#: Rows per statement of a PostgreSQL bulk write (one array parameter per column).
_CHUNK = 20_000
_FILE_COLUMNS = ("brand_id, kind, digest, sha256, row_count, created, changed, points, actor, operator_id, reason, at")


@dataclass(frozen=True, slots=True)
class CsvResult:
    """What an applied file did."""

    brand_id: str
    kind: str
    digest: str
    sha256: str
    rows: int
    created: int  # customers enrolled (imports)
    changed: int  # customers that took a new version, created ones included
    points: int  # net points the file's ledger entries moved
    actor: str
    operator_id: str | None
    reason: str | None
    at: int


@dataclass
class _Plan:
    """What a checked file writes."""

    balances: dict[str, int] = field(default_factory=dict)  # customer_id -> balance after
    opt_outs: dict[str, bool] = field(default_factory=dict)
    new: list[CustomerState] = field(default_factory=list)
    consents: list[ConsentRecord] = field(default_factory=list)
    # (customer_id, points, reason, balance after, line) per ledger entry
    entries: list[tuple[str, int, str, int, int]] = field(default_factory=list)
    consent_json: dict[tuple[str, ...], str] = field(default_factory=dict)  # one text per set of channels


def _marks(columns: str) -> str:
    return ", ".join(f"${n}" for n in range(1, columns.count(",") + 2))


def _check(name: str, value: str | None, max_len: int, required: bool) -> None:
    try:
        check_text(name, value, max_len, required=required)
    except LocalProtocolError as exc:
        raise ConfigError(exc.message, field=name, code=exc.code) from exc


class _Matcher:
    """The brand's customers a file names, by id and by each identifier."""

    def __init__(self, customers: dict[str, CustomerState]) -> None:
        self.by_id = customers
        self.by_value: dict[tuple[str, str], list[CustomerState]] = {}
        for c in customers.values():
            for name, column in _COLUMN.items():
                value = getattr(c, column)
                if value is not None:
                    self.by_value.setdefault((name, value), []).append(c)

    def match(self, ident: Ident, *, enrolling: bool) -> CustomerState | None:
        """The one customer the row's identifiers find, None if none does (raises ``_RowBad``
        when they find several). In an import an unknown customer_id is ignored (it may come
        from another program); elsewhere it is an error."""
        found: dict[str, CustomerState] = {}
        if ident.customer_id is not None:
            hit = self.by_id.get(ident.customer_id)
            if hit is not None:
                found[hit.customer_id] = hit
            elif not enrolling:
                raise _RowBad("customer_id", "unknown_customer", "no customer of this brand has this id")
        for name, value in ident.given():
            if name == "customer_id":
                continue
            hits = self.by_value.get((name, value), [])
            if len(hits) > 1:
                raise _RowBad(name, "ambiguous", f"{len(hits)} customers of this brand have this {name}")
            found.update((h.customer_id, h) for h in hits)
        if len(found) > 1:
            raise _RowBad(None, "ambiguous", "the row's identifiers name different customers: "
                                             + ", ".join(sorted(found)))
        if not found and not enrolling:
            raise _RowBad(None, "unknown_customer", "no customer of this brand matches the row")
        return next(iter(found.values()), None)


class _RowBad(Exception):
    def __init__(self, field: str | None, code: str, message: str) -> None:
        super().__init__(message)
        self.field, self.code, self.message = field, code, message


def _consent_json(channels: tuple[str, ...], actor: str, now: int) -> str:
    consent = {"at": now, "channels": list(channels), "source": "import", "staff": actor, "terms_accepted": True}
    return json.dumps(consent, sort_keys=True, separators=(",", ":"))


def _new_customer(brand_id: str, row: ImportRow, consent: str, now: int) -> CustomerState:
    return CustomerState(
        customer_id=uuid7(now), brand_id=brand_id, name=row.name or "", phone=row.ident.phone,
        email=row.ident.email, card_code=row.ident.customer_code,
        consent=consent, balance=row.balance, version=0,
        enrolled_store=CLOUD_ORIGIN, created_at=now, updated_at=now, opted_out=row.opted_out,
    )


def plan_file(brand_id: str, file: CsvFile, customers: dict[str, CustomerState], actor: str, reason: str | None,
              now: int) -> _Plan:
    """Check every row against the brand's (locked) customers; ``CsvRejected`` lists every bad one."""
    matcher = _Matcher(customers)
    plan = _Plan()
    errors: list[RowError] = []
    seen: dict[str, int] = {}  # customer_id -> first line naming it
    new_keys: dict[tuple[str, str], int] = {}  # identifiers of the profiles the file creates
    for row in file.rows:
        try:
            customer = matcher.match(row.ident, enrolling=isinstance(row, ImportRow))
            if isinstance(row, AdjustRow):
                assert customer is not None  # match() refuses an unknown customer outside an import
                before = plan.balances.get(customer.customer_id, customer.balance)
                if before + row.points < 0:
                    raise _RowBad("points", "insufficient_balance",
                                  f"not enough points: the balance is {before}, the row takes {-row.points}")
                plan.balances[customer.customer_id] = before + row.points
                plan.entries.append((customer.customer_id, row.points, row.reason, before + row.points, row.line))
                continue
            if customer is not None and customer.customer_id in seen:
                raise _RowBad(None, "duplicate", f"the same customer as line {seen[customer.customer_id]}")
            if isinstance(row, OptOutRow):
                assert customer is not None
                seen[customer.customer_id] = row.line
                if customer.opted_out != row.opted_out:
                    plan.opt_outs[customer.customer_id] = row.opted_out
                continue
            assert isinstance(row, ImportRow)
            if customer is not None:
                seen[customer.customer_id] = row.line
                if row.balance > 0:
                    after = customer.balance + row.balance
                    plan.balances[customer.customer_id] = after
                    plan.entries.append((customer.customer_id, row.balance, reason or DEFAULT_IMPORT_REASON, after,
                                         row.line))
                continue
            _enroll(brand_id, row, actor, reason, now, plan, new_keys)
        except _RowBad as bad:
            errors.append(RowError(row.line, bad.field, bad.code, bad.message))
    if errors:
        raise CsvRejected(errors[:MAX_ERRORS], len(errors))
    return plan


def _enroll(brand_id: str, row: ImportRow, actor: str, reason: str | None, now: int, plan: _Plan,
            new_keys: dict[tuple[str, str], int]) -> None:
    keys = [(n, v) for n, v in row.ident.given() if n != "customer_id"]
    if not keys:
        raise _RowBad("customer_code", "cannot_enroll", "no customer matches, and a new profile needs a customer "
                                                        "code, a phone or an email")
    if row.name is None:
        raise _RowBad("name", "cannot_enroll", "no customer matches, and a new profile needs a name")
    for key in keys:
        if key in new_keys:
            raise _RowBad(key[0], "duplicate", f"the same {key[0]} as line {new_keys[key]}")
    new_keys.update((key, row.line) for key in keys)
    consent = plan.consent_json.get(row.channels)
    if consent is None:
        consent = plan.consent_json[row.channels] = _consent_json(row.channels, actor, now)
    customer = _new_customer(brand_id, row, consent, now)
    plan.new.append(customer)
    plan.consents += [ConsentRecord(brand_id, customer.customer_id, ch, True, now, "import", None, actor)
                      for ch in row.channels]
    if row.balance > 0:
        plan.entries.append((customer.customer_id, row.balance, reason or DEFAULT_IMPORT_REASON, row.balance,
                             row.line))


async def _lookup(q: Session, brand_id: str, file: CsvFile) -> dict[str, CustomerState]:
    """The brand's customers any row names, locked in customer_id order."""
    values: dict[str, set[str]] = {"customer_id": set(), "customer_code": set(), "phone": set(), "email": set()}
    for row in file.rows:
        for name, value in row.ident.given():
            values[name].add(value)
    d = q.dialect
    rows = await q.fetch(
        f"SELECT customer_id FROM customers WHERE brand_id = $1 AND ({d.any_of('customer_id', 2)}"
        f" OR {d.any_of('card_code', 3)} OR {d.any_of('phone', 4)} OR {d.any_of('email', 5)})",
        brand_id, *(d.strings(sorted(values[n])) for n in ("customer_id", "customer_code", "phone", "email")),
    )
    return await lock_customers(q, [r[0] for r in rows])


async def _insert(q: Session, table: str, cols: Columns, rows: Sequence[Sequence[object]]) -> None:
    """Many rows: executemany on SQLite (one writer, in-process), one ``unnest`` statement per
    ``_CHUNK`` rows on PostgreSQL (a round trip per row would dominate a 100,000-row file)."""
    if not rows:
        return
    if q.dialect.sqlite:
        await q.many(f"INSERT INTO {table} ({names(cols)}) VALUES ({_marks(names(cols))})", rows)
        return
    arrays = ", ".join(f"${i}::{t}[]" for i, (_, t) in enumerate(cols, 1))
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start:start + _CHUNK]
        await q.fetch(f"INSERT INTO {table} ({names(cols)}) SELECT * FROM unnest({arrays})",
                      *([list(c) for c in zip(*chunk, strict=True)]))


async def _update_customers(q: Session, rows: Sequence[Sequence[object]]) -> None:
    """(balance, opted_out, version, updated_at, customer_id) per customer."""
    if not rows:
        return
    if q.dialect.sqlite:
        await q.many("UPDATE customers SET balance = $1, opted_out = $2, version = $3, updated_at = $4"
                     " WHERE customer_id = $5", rows)
        return
    arrays = ", ".join(f"${i}::{t}[]" for i, (_, t) in enumerate(_UPDATE, 1))
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start:start + _CHUNK]
        await q.fetch(
            "UPDATE customers AS c SET balance = u.balance, opted_out = u.opted_out, version = u.version,"
            f" updated_at = u.updated_at FROM unnest({arrays}) AS u({names(_UPDATE)})"
            " WHERE c.customer_id = u.customer_id", *([list(col) for col in zip(*chunk, strict=True)]))


class SqlCsv:
    """Merchant CSV files on the ledger; mixed into both backends."""

    def _read(self) -> AbstractAsyncContextManager[Session]:
        raise NotImplementedError

    def _write(self) -> AbstractAsyncContextManager[Session]:
        raise NotImplementedError

    async def apply_csv(self, brand_id: str, file: CsvFile, actor: str, now: int, *,
                        operator_id: str | None = None, reason: str | None = None) -> CsvResult:
        """Apply a parsed file whole, or raise (``CsvRejected`` with every bad row, ``Refused``
        ``file_already_applied``, ``NotFound``) having changed nothing."""
        _check("actor", actor, 100, True)
        _check("reason", reason, 500, False)
        async with self._write() as q:
            if not await q.fetch("SELECT 1 FROM brands WHERE brand_id = $1", brand_id):
                raise NotFound(f"no brand {brand_id!r}", field="brand_id")
            if not q.dialect.sqlite:  # SQLite's one writer already serialises files
                await q.fetch("SELECT pg_advisory_xact_lock(hashtext($1))", _CSV_LOCK + brand_id)
                if file.kind is Kind.IMPORT:
                    await q.fetch("SELECT pg_advisory_xact_lock(hashtext($1))", _ENROLL_LOCK + brand_id)
            done = await q.fetch("SELECT actor, at FROM csv_files WHERE brand_id = $1 AND kind = $2 AND digest = $3",
                                 brand_id, file.kind.value, file.digest)
            if done:
                raise Refused(f"these rows were already applied to brand {brand_id!r} (by {done[0][0]}, at"
                              f" {done[0][1]}): nothing was changed", field="file", code="file_already_applied")
            customers = await _lookup(q, brand_id, file)
            plan = plan_file(brand_id, file, customers, actor, reason, now)
            await self._write_plan(q, brand_id, file, plan, customers, actor, operator_id, now)
            result = CsvResult(brand_id, file.kind.value, file.digest, file.sha256, len(file.rows), len(plan.new),
                               len(set(plan.balances) | set(plan.opt_outs)) + len(plan.new),
                               sum(e[1] for e in plan.entries), actor, operator_id, reason, now)
            await q.fetch(f"INSERT INTO csv_files ({_FILE_COLUMNS}) VALUES ({_marks(_FILE_COLUMNS)})",
                          result.brand_id, result.kind, result.digest, result.sha256, result.rows, result.created,
                          result.changed, result.points, actor, operator_id, reason, now)
        # Counts and ids only: the actor is a person's name.
        log.info("csv %s applied to brand %s: %d rows, %d customers created, %d changed, %d points, digest %s,"
                 " operator %s", result.kind, brand_id, result.rows, result.created, result.changed, result.points,
                 result.digest[:16], operator_id)
        return result

    @staticmethod
    async def _write_plan(q: Session, brand_id: str, file: CsvFile, plan: _Plan, customers: dict[str, CustomerState],
                          actor: str, operator_id: str | None, now: int) -> None:
        # What carries no version first: the brand's counter is taken last and held to commit
        # (as a batch does), so the brand's batches wait for this file as briefly as they can.
        await _insert(q, "consents", _CONSENT, [astuple(c) for c in plan.consents])
        kind = IMPORT_KIND if file.kind is Kind.IMPORT else "adjust"
        op_ids = [uuid7(now) for _ in plan.entries]
        await _insert(q, "ledger_entries", ENTRY, [
            (cid, op_id, CLOUD_ORIGIN, None, kind, points, now)
            for op_id, (cid, points, *_) in zip(op_ids, plan.entries, strict=True)])
        changed = sorted(set(plan.balances) | set(plan.opt_outs))
        count = len(changed) + len(plan.new)
        if not count:
            return
        first = await take_versions(q, brand_id, count)
        versions = {cid: first + n for n, cid in enumerate(changed)}
        rows = []
        for n, customer in enumerate(plan.new, first + len(changed)):
            row = astuple(customer)
            rows.append((*row[:8], n, *row[9:]))
            versions[customer.customer_id] = n
        await _insert(q, "customers", CUSTOMER, rows)
        await _update_customers(q, [
            (plan.balances.get(cid, customers[cid].balance), plan.opt_outs.get(cid, customers[cid].opted_out),
             versions[cid], now, cid) for cid in changed])
        await _insert(q, "adjustments", _ADJUSTMENT, [
            (op_id, brand_id, cid, points, reason, actor, operator_id, after, versions[cid], now, file.digest, line)
            for op_id, (cid, points, reason, after, line) in zip(op_ids, plan.entries, strict=True)])

    async def export_balances(self, brand_id: str) -> list[Row]:
        """(customer_id, card_code, balance, opted_out, name, phone, email) of every customer of
        the brand, by customer_id, read in one snapshot."""
        async with self._read() as q:
            if not await q.fetch("SELECT 1 FROM brands WHERE brand_id = $1", brand_id):
                raise NotFound(f"no brand {brand_id!r}", field="brand_id")
            rows = await q.fetch(
                "SELECT customer_id, card_code, balance, opted_out, name, phone, email FROM customers"
                " WHERE brand_id = $1 ORDER BY customer_id", brand_id)
        return [(r[0], r[1], r[2], bool(r[3]), *r[4:]) for r in rows]

