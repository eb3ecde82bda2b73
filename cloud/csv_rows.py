"""Merchant CSV files, parsed and checked with no I/O: balance imports, bulk opt-outs,
bulk adjustments, and the balance export's text.

A file is bounded in bytes and lines before the ``csv`` module reads a byte
of it. Its first line names its columns (any order, case-insensitive);
a column this kind of file does not know is an error, as is a missing
required one. Every bad row is reported with its line number (the line the
row starts on, the header being line 1), its column and why, up to
``MAX_ERRORS`` of them plus a count of the rest; one bad row refuses the
whole file. Values are normalised as the edge does (E.164 phones, lower-case
emails), so the storage side matches a customer however the file spells it.

A file's ``digest`` is the SHA-256 of its kind and its rows as parsed,
sorted: the same rows give the same digest whatever the line endings,
quoting, column order, row order or phone spelling. The ledger refuses a
digest already applied to the brand, so a re-sent or re-saved file never
counts twice.
"""

from __future__ import annotations

import csv
import enum
import hashlib
import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from protocol import normalize
from protocol.errors import LocalProtocolError
from protocol.validate import MAX_POINTS, check_text

from .errors import ConfigError

#: A file is refused before parsing above either bound.
MAX_BYTES = 16 * 1024 * 1024
MAX_ROWS = 100_000
#: Bad rows reported one by one; beyond that only their count.
MAX_ERRORS = 100
#: A cell starting with one of these could run as a formula in a spreadsheet: the export
#: prefixes it with ``'``, which a later import takes off again.
_FORMULA = ("=", "+", "-", "@", "\t", "\r")
_INT = re.compile(r"^[+-]?[0-9]{1,10}$")
_TRUE = frozenset({"true", "yes", "y", "1"})
_FALSE = frozenset({"false", "no", "n", "0"})

IDENTIFIERS = ("customer_id", "customer_code", "phone", "email")


class Kind(enum.StrEnum):
    IMPORT = "import_balances"
    OPT_OUT = "opt_out"
    ADJUST = "adjust"


#: Columns each kind of file may have, and the ones it must have (plus one identifier).
COLUMNS: dict[Kind, tuple[frozenset[str], frozenset[str]]] = {
    Kind.IMPORT: (frozenset({*IDENTIFIERS, "name", "balance", "opted_out", "consent_email", "consent_phone"}),
                  frozenset({"balance"})),
    Kind.OPT_OUT: (frozenset({*IDENTIFIERS, "opted_out"}), frozenset()),
    Kind.ADJUST: (frozenset({*IDENTIFIERS, "points", "reason"}), frozenset({"points"})),
}
EXPORT_COLUMNS = ("customer_id", "customer_code", "balance", "opted_out")
CONTACT_COLUMNS = ("name", "phone", "email")


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    field: str | None
    code: str
    message: str

    def text(self) -> str:
        column = f" ({self.field})" if self.field else ""
        return f"line {self.line}{column}: {self.message}"

    def to_json(self) -> dict[str, object]:
        return {"line": self.line, "field": self.field, "code": self.code, "message": self.message}


class CsvRejected(ConfigError):
    """The file has bad rows: nothing was applied. ``errors`` are the first ``MAX_ERRORS``."""

    def __init__(self, errors: Sequence[RowError], total: int) -> None:
        shown = "; ".join(e.text() for e in errors[:3])
        more = f" (and {total - 3} more)" if total > 3 else ""
        super().__init__(f"{total} bad rows, nothing was applied: {shown}{more}", field="file", code="invalid_rows")
        self.errors = tuple(errors)
        self.total = total


@dataclass(frozen=True, slots=True)
class Ident:
    """How a row names its customer (normalised; None where the row gives nothing)."""

    customer_id: str | None
    customer_code: str | None
    phone: str | None
    email: str | None

    def given(self) -> tuple[tuple[str, str], ...]:
        return tuple((name, value) for name in IDENTIFIERS if (value := getattr(self, name)) is not None)


@dataclass(frozen=True, slots=True)
class ImportRow:
    line: int
    ident: Ident
    name: str | None
    balance: int
    opted_out: bool
    channels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class OptOutRow:
    line: int
    ident: Ident
    opted_out: bool


@dataclass(frozen=True, slots=True)
class AdjustRow:
    line: int
    ident: Ident
    points: int
    reason: str


Row = ImportRow | OptOutRow | AdjustRow


@dataclass(frozen=True, slots=True)
class CsvFile:
    kind: Kind
    rows: tuple[Row, ...]
    digest: str  # of the rows as parsed (see the module's doc)
    sha256: str  # of the bytes as received, for the record


class _Bad(Exception):
    def __init__(self, field: str | None, message: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.field, self.message, self.code = field, message, code


# ---- cells


def _unescape(value: str) -> str:
    """A cell the export protected from spreadsheets, as it was."""
    return value[1:] if value[:1] == "'" and value[1:2] in _FORMULA else value


def escape_cell(value: str) -> str:
    return "'" + value if value.startswith(_FORMULA) else value


def _bool(field: str, text: str, default: bool) -> bool:
    low = text.strip().lower()
    if not low:
        return default
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise _Bad(field, f"{field} must be true or false (yes/no, 1/0)")


def _int(field: str, text: str, low: int, high: int) -> int:
    cleaned = text.strip()
    if not _INT.match(cleaned):
        raise _Bad(field, f"{field} must be a whole number", "invalid_type")
    value = int(cleaned)
    if not low <= value <= high:
        raise _Bad(field, f"{field} must be between {low} and {high}", "out_of_range")
    return value


def _text(field: str, text: str, max_len: int) -> str | None:
    cleaned = _unescape(text.strip())
    if not cleaned:
        return None
    try:
        check_text(field, cleaned, max_len)
    except LocalProtocolError as exc:
        raise _Bad(field, exc.message, exc.code or "invalid_value") from exc
    return cleaned


def _ident(cells: dict[str, str], region: str | None) -> Ident:
    try:
        customer_id = _text("customer_id", cells.get("customer_id", ""), 64)
        code = _text("customer_code", cells.get("customer_code", ""), 64)
        code = None if code is None else normalize.card_code(code)
        phone = _text("phone", cells.get("phone", ""), 64)
        phone = None if phone is None else normalize.phone(phone, region)
        email = _text("email", cells.get("email", ""), 254)
        email = None if email is None else normalize.email(email)
    except LocalProtocolError as exc:
        raise _Bad(exc.field, exc.message, exc.code or "invalid_value") from exc
    ident = Ident(customer_id, code, phone, email)
    if not ident.given():
        raise _Bad(None, f"the row names no customer: give one of {', '.join(IDENTIFIERS)}", "missing")
    return ident


def _row(kind: Kind, line: int, cells: dict[str, str], region: str | None, default_reason: str | None) -> Row:
    ident = _ident(cells, region)
    if kind is Kind.OPT_OUT:
        return OptOutRow(line, ident, _bool("opted_out", cells.get("opted_out", ""), True))
    if kind is Kind.ADJUST:
        points = _int("points", cells["points"], -MAX_POINTS, MAX_POINTS)
        if points == 0:
            raise _Bad("points", "points must not be zero", "out_of_range")
        reason = _text("reason", cells.get("reason", ""), 500) or default_reason
        if reason is None:
            raise _Bad("reason", "the row has no reason (add one, or give a default reason)", "missing")
        return AdjustRow(line, ident, points, reason)
    channels = tuple(c for c in ("email", "phone") if _bool(f"consent_{c}", cells.get(f"consent_{c}", ""), False))
    for channel in channels:
        if getattr(ident, channel) is None:
            raise _Bad(f"consent_{channel}", f"consent to {channel} needs the customer's {channel} in the row")
    return ImportRow(line, ident, _text("name", cells.get("name", ""), 200),
                     _int("balance", cells["balance"], 0, MAX_POINTS),
                     _bool("opted_out", cells.get("opted_out", ""), False), channels)


# ---- files


def _bounded(data: bytes) -> str:
    if len(data) > MAX_BYTES:
        raise ConfigError(f"the file has {len(data)} bytes; at most {MAX_BYTES}", field="file", code="too_large")
    # Lines, not rows: a quoted line break counts, so this bound is never looser than the rows'.
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    if lines > MAX_ROWS + 1:
        raise ConfigError(f"the file has {lines} lines; at most {MAX_ROWS} rows and a header",
                          field="file", code="too_large")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"the file is not UTF-8 (byte {exc.start})", field="file", code="invalid_encoding") from exc


def _header(kind: Kind, cells: list[str]) -> list[str]:
    allowed, required = COLUMNS[kind]
    names = [c.strip().lower() for c in cells]
    errors: list[str] = []
    for name in names:
        if name not in allowed:
            errors.append(f"unknown column {name!r} (known: {', '.join(sorted(allowed))})")
    dupes = sorted({n for n in names if names.count(n) > 1})
    errors += [f"column {n!r} appears twice" for n in dupes]
    errors += [f"column {n!r} is required" for n in sorted(required - set(names))]
    if not set(names) & set(IDENTIFIERS):
        errors.append(f"no column names the customer: add one of {', '.join(IDENTIFIERS)}")
    if errors:
        raise CsvRejected([RowError(1, "header", "invalid_header", e) for e in errors], len(errors))
    return names


def parse(kind: Kind, data: bytes, *, region: str | None = None, default_reason: str | None = None) -> CsvFile:
    """The file's rows, or ``CsvRejected`` listing every bad row (``ConfigError`` for a file
    too large or not UTF-8). ``region`` reads phones written without a country code."""
    if default_reason is not None:
        try:
            check_text("reason", default_reason, 500, required=True)
        except LocalProtocolError as exc:
            raise ConfigError(exc.message, field="reason", code=exc.code) from exc
    if region is not None and not normalize.is_region(region):
        raise ConfigError(f"{region!r} is not a region code (e.g. CA, FR)", field="region")
    text = _bounded(data)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    errors: list[RowError] = []
    total = 0
    rows: list[Row] = []
    names: list[str] | None = None
    start = 1
    try:
        for cells in reader:
            line, start = start, reader.line_num + 1
            if not any(c.strip() for c in cells):
                continue  # blank lines (a trailing one, a spacer) carry nothing
            if names is None:
                names = _header(kind, cells)
                continue
            if len(cells) != len(names):
                total += 1
                errors.append(RowError(line, None, "wrong_columns",
                                       f"the row has {len(cells)} cells; the header names {len(names)}"))
                continue
            try:
                rows.append(_row(kind, line, dict(zip(names, cells, strict=True)), region, default_reason))
            except _Bad as bad:
                total += 1
                errors.append(RowError(line, bad.field, bad.code, bad.message))
    except csv.Error as exc:
        total += 1
        errors.append(RowError(start, None, "invalid_csv", f"not valid CSV: {exc}"))
    if names is None:
        raise CsvRejected([RowError(1, "header", "invalid_header", "the file is empty: the first line names "
                                    "the columns")], 1)
    if errors:
        raise CsvRejected(errors[:MAX_ERRORS], total)
    return CsvFile(kind, tuple(rows), digest_of(kind, rows), hashlib.sha256(data).hexdigest())


def _content(row: Row) -> list[object]:
    ident = list(row.ident.given())
    if isinstance(row, ImportRow):
        return [ident, row.name, row.balance, row.opted_out, list(row.channels)]
    if isinstance(row, OptOutRow):
        return [ident, row.opted_out]
    return [ident, row.points, row.reason]


def digest_of(kind: Kind, rows: Iterable[Row]) -> str:
    lines = sorted(json.dumps(_content(r), ensure_ascii=False, separators=(",", ":")) for r in rows)
    return hashlib.sha256("\n".join([kind.value, *lines]).encode()).hexdigest()


def export_text(rows: Iterable[Sequence[object]], contacts: bool) -> str:
    """The export: ``EXPORT_COLUMNS`` (+ ``CONTACT_COLUMNS`` with ``contacts``) per customer,
    rows as (customer_id, card_code, balance, opted_out, name, phone, email). Text cells that a
    spreadsheet would run as a formula are prefixed with ``'``; an import takes it off."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS + (CONTACT_COLUMNS if contacts else ()))
    for customer_id, code, balance, opted_out, name, phone, email in rows:
        cells: list[object] = [customer_id, escape_cell(str(code or "")), balance, "true" if opted_out else "false"]
        if contacts:
            cells += [escape_cell(str(name or "")), phone or "", escape_cell(str(email or ""))]
        writer.writerow(cells)
    return buffer.getvalue()
