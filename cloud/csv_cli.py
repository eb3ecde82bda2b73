"""``loyalty-cloud csv ...``: a merchant's CSV files from the cloud's shell.

``import-balances``, ``opt-out`` and ``adjust`` read ``FILE`` (``-``: stdin),
apply it whole or not at all, and print what they did as one JSON line;
bad rows are printed one per line on stderr (``line N (column): why``) and
the exit code is 2 with nothing changed. ``export`` writes the brand's
balances (``--contacts`` adds name, phone and email) to ``FILE`` (mode 0600)
or stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, BinaryIO

from .app import wall_clock_ms
from .checks import check_id
from .cli_common import Fail, out, require_ledger, with_storage
from .config import DataDir
from .csv_rows import MAX_BYTES, CsvRejected, Kind, export_text, parse
from .errors import ConfigError

_KINDS = {"import-balances": Kind.IMPORT, "opt-out": Kind.OPT_OUT, "adjust": Kind.ADJUST}


def _read(path: str) -> bytes:
    """At most ``MAX_BYTES`` + 1 bytes: a larger file is refused without reading it all."""
    try:
        if path == "-":
            return sys.stdin.buffer.read(MAX_BYTES + 1)
        with open(path, "rb") as handle:
            stream: BinaryIO = handle
            return stream.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}", field="file") from exc


def cmd_apply(args: argparse.Namespace, data: DataDir) -> int:
    check_id("brand_id", args.brand_id)
    kind = _KINDS[args.action]
    default_reason = args.reason if kind is Kind.ADJUST else None
    try:
        parsed = parse(kind, _read(args.file), region=args.region, default_reason=default_reason)
        require_ledger(args, data)
        result = with_storage(args, data, lambda s: s.apply_csv(
            args.brand_id, parsed, args.actor, wall_clock_ms(),
            reason=args.reason if kind is Kind.IMPORT else default_reason))
    except CsvRejected as exc:
        for error in exc.errors:
            sys.stderr.write(error.text() + "\n")
        more = exc.total - len(exc.errors)
        if more:
            sys.stderr.write(f"... and {more} more bad rows\n")
        raise Fail(f"{exc.total} bad rows in {args.file}: nothing was applied", 2) from exc
    out(json.dumps(dataclasses.asdict(result)))
    return 0


def cmd_export(args: argparse.Namespace, data: DataDir) -> int:
    check_id("brand_id", args.brand_id)
    require_ledger(args, data)
    rows = with_storage(args, data, lambda s: s.export_balances(args.brand_id))
    text = export_text(rows, args.contacts)
    if args.file == "-":
        sys.stdout.write(text)
        return 0
    try:
        fd = os.open(args.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
    except OSError as exc:
        raise ConfigError(f"cannot write {args.file}: {exc.strerror or exc}", field="file") from exc
    sys.stderr.write(f"{len(rows)} customers written to {Path(args.file)}\n")
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("csv", help="merchant CSV files: import balances, bulk opt-out and adjustments, export")
    actions = group.add_subparsers(dest="action", required=True)
    helps = {
        "import-balances": "import opening balances from another program (enrolls unknown customers)",
        "opt-out": "take customers out of the program (an opted_out column can put them back)",
        "adjust": "adjust balances in bulk: rows of customer, signed points and reason",
    }
    for action, text in helps.items():
        p = actions.add_parser(action, parents=[common], help=text)
        p.add_argument("brand_id")
        p.add_argument("file", help="the CSV file (- for stdin); the first line names the columns")
        p.add_argument("--actor", required=True, help="who decided it (recorded with every change)")
        p.add_argument("--region", default=None, metavar="CC",
                       help="region of phone numbers written without a country code (e.g. CA)")
        if action != "opt-out":
            p.add_argument("--reason", default=None,
                           help="recorded with the import" if action == "import-balances"
                           else "the reason of rows that give none")
        else:
            p.set_defaults(reason=None)
        p.set_defaults(func=cmd_apply)
    p = actions.add_parser("export", parents=[common], help="every customer's balance, as CSV")
    p.add_argument("brand_id")
    p.add_argument("file", help="where to write it (mode 0600), - for stdout")
    p.add_argument("--contacts", action="store_true", help="add name, phone and email (personal data)")
    p.set_defaults(func=cmd_export)
