"""``loyalty-cloud``: set up and run the cloud ledger.

Exit codes: 0 ok; 2 bad arguments or operator input (nothing changed);
1 the database or the system failed (or ``audit`` found a mismatch).

The ledger is SQLite in the data directory unless ``--dsn postgresql://...``
(or ``LOYALTY_CLOUD_DSN``) names a PostgreSQL database; the cloud key always
lives in the data directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from protocol import uuid7
from protocol.signup_link import LinkKind, make_token, signup_url
from runtime.logsetup import LOG_FORMATS
from runtime.logsetup import configure as configure_logging

from . import admin_api, cli_jobs, cli_merges, config_file, csv_cli, customer_cli, store_cli
from .app import bind, make_app, serve, url_of, wall_clock_ms
from .checks import check_id, check_name, check_program, parse_public_key_hex
from .cli_common import MAX_WORKERS
from .cli_common import Fail as _Fail
from .cli_common import out as _out
from .cli_common import require_ledger as _require_ledger
from .cli_common import with_storage as _with_storage
from .cloud_keyring import register_serving_key
from .config import DSN_ENV, DataDir, dsn_from, make_storage
from .engagement_config import add_engagement_options, check_base_url, engagement_from
from .errors import ConfigError, StoreError
from .keys import CloudKey, load_key, load_or_create_key
from .service import ACK_WAIT
from .storage import Storage

PROG = "loyalty-cloud"

def _print_key(key: CloudKey, as_json: bool, **extra: Any) -> None:
    if as_json:
        _out(json.dumps({"key_id": key.key_id, "public_key": key.public_hex, **extra}))
    else:
        _out(f"{key.key_id} {key.public_hex}")


# ---- commands


def cmd_init(args: argparse.Namespace, data: DataDir) -> int:
    data.create()
    key, created = load_or_create_key(data.key_file)
    _with_storage(args, data, lambda s: register_serving_key(s, key, wall_clock_ms()))  # migrates first
    _print_key(key, args.json, created=created, data=str(data.path))
    return 0


def cmd_public_key(args: argparse.Namespace, data: DataDir) -> int:
    data.require_initialised(sqlite=args.dsn is None)
    _print_key(load_key(data.key_file), args.json)
    return 0


def cmd_brand_add(args: argparse.Namespace, data: DataDir) -> int:
    check_id("brand_id", args.brand_id)
    check_name(args.name)
    data.require_initialised(sqlite=args.dsn is None)
    brand = _with_storage(args, data, lambda s: s.add_brand(args.brand_id, args.name, wall_clock_ms()))
    _out(f"brand {brand.brand_id} added: {brand.name}")
    return 0


def cmd_brand_list(args: argparse.Namespace, data: DataDir) -> int:
    data.require_initialised(sqlite=args.dsn is None)
    for brand in _with_storage(args, data, lambda s: s.list_brands()):
        _out(json.dumps(dataclasses.asdict(brand)))
    return 0


def _settings_text(path: Path | None) -> str:
    if path is None:
        return "{}"
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the settings file {path}: {exc}", field="settings") from exc


def cmd_program_set(args: argparse.Namespace, data: DataDir) -> int:
    check_id("brand_id", args.brand_id)
    settings = _settings_text(args.settings)
    check_program(args.brand_id, 1, args.name, args.points_per_unit, args.unit_amount, settings)
    data.require_initialised(sqlite=args.dsn is None)
    program = _with_storage(
        args,
        data,
        lambda s: s.set_program(
            args.brand_id, args.name, args.points_per_unit, args.unit_amount, wall_clock_ms(), settings
        ),
    )
    _out(
        f"program {program.brand_id} v{program.version}: {program.name},"
        f" {program.points_per_unit} points per {program.unit_amount}"
    )
    return 0


def cmd_store_add(args: argparse.Namespace, data: DataDir) -> int:
    check_id("store_id", args.store_id)
    check_id("brand_id", args.brand)
    if args.public_key is None:
        return store_cli.cmd_store_add_to_claim(args, data)
    raw = parse_public_key_hex(args.public_key)
    data.require_initialised(sqlite=args.dsn is None)
    key = _with_storage(args, data, lambda s: s.add_store(args.store_id, args.brand, raw, wall_clock_ms()))
    if args.json:
        _out(json.dumps({"store_id": key.store_id, "brand_id": key.brand_id, "key_id": key.key_id}))
    else:
        _out(f"store {key.store_id} ({key.brand_id}) key {key.key_id}")
    return 0


def cmd_store_add_key(args: argparse.Namespace, data: DataDir) -> int:
    check_id("store_id", args.store_id)
    raw = parse_public_key_hex(args.public_key)
    data.require_initialised(sqlite=args.dsn is None)
    key = _with_storage(args, data, lambda s: s.add_store_key(args.store_id, raw, wall_clock_ms()))
    _out(f"store {key.store_id} key {key.key_id}")
    return 0


def cmd_store_revoke_key(args: argparse.Namespace, data: DataDir) -> int:
    data.require_initialised(sqlite=args.dsn is None)
    key = _with_storage(args, data, lambda s: s.revoke_key(args.key_id, wall_clock_ms()))
    _out(f"key {key.key_id} of store {key.store_id} revoked at {key.revoked_at}")
    return 0


def cmd_store_list(args: argparse.Namespace, data: DataDir) -> int:
    data.require_initialised(sqlite=args.dsn is None)
    for store in _with_storage(args, data, lambda s: s.list_stores()):
        if args.json:
            row = dataclasses.asdict(store)
            row["last_hash"] = store.last_hash.hex()
            row["key_ids"] = list(store.key_ids)
            _out(json.dumps(row))
        else:
            revoked = f"\trevoked: {store.revoke_reason}" if store.revoked_at is not None else ""
            keys = ",".join(store.key_ids) or "awaiting its edge's claim"
            _out(f"{store.store_id}\t{store.brand_id}\tseq={store.last_seq}\t{keys}{revoked}")
    return 0


def cmd_conflicts(args: argparse.Namespace, data: DataDir) -> int:
    data.require_initialised(sqlite=args.dsn is None)
    for conflict in _with_storage(args, data, lambda s: s.list_conflicts(args.store)):
        _out(json.dumps(dataclasses.asdict(conflict)))
    return 0


def cmd_operator_add(args: argparse.Namespace, data: DataDir) -> int:
    check_name(args.name)
    if args.brand is not None:
        check_id("brand_id", args.brand)
    _require_ledger(args, data)
    token = admin_api.new_token()
    now = wall_clock_ms()
    operator = _with_storage(
        args, data, lambda s: s.add_operator(uuid7(now), args.name, args.brand, admin_api.hash_token(token), now)
    )
    scope = f"brand {operator.brand_id}" if operator.brand_id else "every brand"
    if args.json:
        _out(json.dumps({**dataclasses.asdict(operator), "token": token}))
    else:
        _out(f"operator {operator.operator_id} ({operator.name}, {scope})")
        _out(f"token (shown once, keep it secret): {token}")
    return 0


def cmd_operator_list(args: argparse.Namespace, data: DataDir) -> int:
    _require_ledger(args, data)
    for operator in _with_storage(args, data, lambda s: s.list_operators()):
        _out(json.dumps(dataclasses.asdict(operator)))
    return 0


def cmd_operator_revoke(args: argparse.Namespace, data: DataDir) -> int:
    _require_ledger(args, data)
    operator = _with_storage(args, data, lambda s: s.revoke_operator(args.operator_id, wall_clock_ms()))
    _out(f"operator {operator.operator_id} ({operator.name}) revoked at {operator.revoked_at}")
    return 0


def cmd_mismatches(args: argparse.Namespace, data: DataDir) -> int:
    _require_ledger(args, data)
    for mismatch in _with_storage(args, data, lambda s: s.list_mismatches(args.store)):
        _out(json.dumps(dataclasses.asdict(mismatch)))
    return 0


def cmd_shortfalls(args: argparse.Namespace, data: DataDir) -> int:
    _require_ledger(args, data)
    for shortfall in _with_storage(args, data, lambda s: s.list_shortfalls(args.store)):
        _out(json.dumps(dataclasses.asdict(shortfall)))
    return 0


def cmd_adjust(args: argparse.Namespace, data: DataDir) -> int:
    check_id("brand_id", args.brand_id)
    _require_ledger(args, data)
    record = _with_storage(args, data, lambda s: s.adjust_balance(
        args.brand_id, args.customer_id, args.points, args.reason, args.actor, wall_clock_ms()
    ))
    _out(json.dumps(dataclasses.asdict(record)))
    return 0


def cmd_expire(args: argparse.Namespace, data: DataDir) -> int:
    _require_ledger(args, data)
    now = wall_clock_ms() if args.now is None else args.now
    summary = _with_storage(args, data, lambda s: s.run_expiry(now))
    _out(json.dumps({"at": now, **dataclasses.asdict(summary)}))
    return 0


def cmd_audit(args: argparse.Namespace, data: DataDir) -> int:
    _require_ledger(args, data)
    mismatches = _with_storage(args, data, lambda s: s.audit_balances())
    for m in mismatches:
        _out(json.dumps(dataclasses.asdict(m)))
    if mismatches:
        raise _Fail(f"{len(mismatches)} balances differ from their ledger entries", 1)
    _out("ok: every balance equals the sum of its ledger entries")
    return 0


def cmd_serve(args: argparse.Namespace, data: DataDir) -> int:
    if not 0 <= args.workers <= MAX_WORKERS:
        raise _Fail(f"--workers must be 0..{MAX_WORKERS}", 2)
    if args.key_file is None:
        data.require_initialised(sqlite=args.dsn is None)
        key = load_key(data.key_file)
    else:
        _require_ledger(args, data)
        key = load_key(args.key_file)
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        raise _Fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", 1) from exc
    try:
        engagement = engagement_from(args, data.path, url_of(sock))
    except BaseException:
        sock.close()
        raise
    logging.getLogger(__name__).info("cloud key %s, data %s, %s, portal %s", key.key_id, data.path, url_of(sock),
                                     engagement.portal.base_url)
    serve(
        make_app(lambda: make_storage(args.dsn, data), key, engagement=engagement, workers=args.workers,
                 ack_wait=args.ack_wait),
        sock,
        on_listening=lambda url: _out(f"listening on {url}"),
        shutdown_timeout=args.shutdown_timeout,
    )
    return 0


def cmd_portal_link(args: argparse.Namespace, data: DataDir) -> int:
    check_id("brand_id", args.brand_id)
    if args.store is not None:
        check_id("store_id", args.store)
    base = check_base_url(args.portal_url, "portal_url")
    _require_ledger(args, data)
    key = load_key(args.key_file or data.key_file)

    async def known(storage: Storage) -> None:
        if args.brand_id not in {b.brand_id for b in await storage.list_brands()}:
            raise ConfigError(f"no brand {args.brand_id!r}", field="brand_id")
        if args.store is not None and (args.store, args.brand_id) not in {
                (s.store_id, s.brand_id) for s in await storage.list_stores()}:
            raise ConfigError(f"no store {args.store!r} in brand {args.brand_id!r}", field="store")

    _with_storage(args, data, known)
    kind = LinkKind.RECEIPT if args.receipt else LinkKind.FLYER
    token = make_token(args.brand_id, args.store, wall_clock_ms(), kind, key.private)
    _out(signup_url(base, args.brand_id, token, args.store))
    return 0


# ---- argument parsing


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("port must be 0..65535")
    return port


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help=f"TOML file of option values (env {config_file.CONFIG_ENV}); every option can also "
                             f"come from {config_file.ENV_PREFIX}<OPTION> in the environment")
    common.add_argument("--data", type=Path, default=None, metavar="DIR", help="data directory (required)")
    common.add_argument(
        "--dsn",
        default=None,
        metavar="URL",
        help=f"PostgreSQL ledger, postgresql://user@host:port/db (default: ${DSN_ENV}, else SQLite in --data)",
    )
    common.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    common.add_argument("--log-format", default="text", choices=list(LOG_FORMATS),
                        help="json: one object per line, for journald or a log shipper")

    parser = argparse.ArgumentParser(prog=PROG, description="Loyalty Edge cloud ledger")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", parents=[common], help="create the data directory, key and database")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("public-key", parents=[common], help="print the cloud key id and public key")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_public_key)

    brand = sub.add_parser("brand", help="brands").add_subparsers(dest="action", required=True)
    p = brand.add_parser("add", parents=[common])
    p.add_argument("brand_id")
    p.add_argument("--name", required=True)
    p.set_defaults(func=cmd_brand_add)
    p = brand.add_parser("list", parents=[common])
    p.set_defaults(func=cmd_brand_list)

    program = sub.add_parser("program", help="loyalty programs").add_subparsers(
        dest="action", required=True
    )
    p = program.add_parser("set", parents=[common], help="set a brand's program (bumps its version)")
    p.add_argument("brand_id")
    p.add_argument("--name", required=True)
    p.add_argument("--points-per-unit", type=int, required=True)
    p.add_argument("--unit-amount", type=int, required=True, help="minor units per earning unit")
    p.add_argument("--settings", type=Path, default=None, metavar="FILE",
                   help="JSON settings: kind, rules, promotions, rewards, refund policy, expiry (see README)")
    p.set_defaults(func=cmd_program_set)

    store = sub.add_parser("store", help="stores and their keys").add_subparsers(
        dest="action", required=True
    )
    p = store.add_parser("add", parents=[common],
                         help="register a store: prints a one-time claim token for its edge (or give its key)")
    p.add_argument("store_id")
    p.add_argument("--brand", required=True)
    p.add_argument("--public-key", default=None, metavar="HEX",
                   help="register this Ed25519 public key now instead of making a claim token")
    p.add_argument("--token-hours", type=store_cli.hours_arg, default=72.0, help="how long the claim token is good for")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_store_add)
    p = store.add_parser("add-key", parents=[common], help="register another key for a store")
    p.add_argument("store_id")
    p.add_argument("--public-key", required=True, metavar="HEX")
    p.set_defaults(func=cmd_store_add_key)
    p = store.add_parser("revoke-key", parents=[common], help="refuse everything signed by a key")
    p.add_argument("key_id")
    p.set_defaults(func=cmd_store_revoke_key)
    p = store.add_parser("list", parents=[common])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_store_list)
    store_cli.add_store_commands(store, common)
    store_cli.add_key_commands(sub, common)

    operator = sub.add_parser("operator", help="users of the admin API and their tokens").add_subparsers(
        dest="action", required=True
    )
    p = operator.add_parser("add", parents=[common], help="make an operator and print its token (once)")
    p.add_argument("name")
    p.add_argument("--brand", default=None, help="limit the operator to this brand (a merchant)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_operator_add)
    p = operator.add_parser("list", parents=[common], help="operators, as JSON lines (no tokens)")
    p.set_defaults(func=cmd_operator_list)
    p = operator.add_parser("revoke", parents=[common], help="refuse an operator's token from now on")
    p.add_argument("operator_id")
    p.set_defaults(func=cmd_operator_revoke)

    p = sub.add_parser("conflicts", parents=[common], help="refused debits, as JSON lines")
    p.add_argument("--store", default=None)
    p.set_defaults(func=cmd_conflicts)

    p = sub.add_parser("mismatches", parents=[common],
                       help="ops applied as the edge computed them while the cloud computed otherwise, as JSON lines")
    p.add_argument("--store", default=None)
    p.set_defaults(func=cmd_mismatches)

    p = sub.add_parser("shortfalls", parents=[common],
                       help="reversals the refund policy clamped at zero or took below zero, as JSON lines")
    p.add_argument("--store", default=None)
    p.set_defaults(func=cmd_shortfalls)

    p = sub.add_parser("adjust", parents=[common], help="adjust a customer's balance, with a reason and an actor")
    p.add_argument("brand_id")
    p.add_argument("customer_id")
    p.add_argument("points", type=int, help="points to add (negative: to take; never below zero)")
    p.add_argument("--reason", required=True)
    p.add_argument("--actor", required=True, help="who decided it")
    p.set_defaults(func=cmd_adjust)

    p = sub.add_parser("expire", parents=[common],
                       help="expire the points due by the programs' expiry settings (safe to run twice)")
    p.add_argument("--now", type=int, default=None, metavar="MS", help="the time to expire at (default: now)")
    p.set_defaults(func=cmd_expire)

    p = sub.add_parser("audit", parents=[common], help="check every balance against its ledger entries")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("serve", parents=[common], help="run the HTTP service")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8600)
    p.add_argument("--shutdown-timeout", type=float, default=10.0)
    p.add_argument(
        "--key-file", type=Path, default=os.environ.get("LOYALTY_CLOUD_KEY_FILE") or None, metavar="FILE",
        help="the signing key (default DIR/cloud.key; env LOYALTY_CLOUD_KEY_FILE), e.g. a systemd credential",
    )
    p.add_argument("--workers", type=int, default=1,
                   help="embedded reconcilers (0 when `loyalty-cloud reconcile` applies the batches)")
    p.add_argument("--ack-wait", type=float, default=ACK_WAIT, metavar="S",
                   help="how long a batch POST waits for its ack before answering 202 (resend later)")
    add_engagement_options(p)
    p.set_defaults(func=cmd_serve)

    portal = sub.add_parser("portal", help="the self-enrollment portal").add_subparsers(dest="action", required=True)
    p = portal.add_parser("link", parents=[common], help="print a signed sign-up link (for a flyer, or --receipt)")
    p.add_argument("brand_id")
    p.add_argument("--store", default=None, help="the store the sign-ups are credited to")
    p.add_argument("--receipt", action="store_true", help="a receipt link: valid for 7 days from now")
    p.add_argument("--portal-url", default=os.environ.get("LOYALTY_CLOUD_PORTAL_URL") or "http://127.0.0.1:8600",
                   metavar="URL", help="the portal's public address (env LOYALTY_CLOUD_PORTAL_URL)")
    p.add_argument("--key-file", type=Path, default=os.environ.get("LOYALTY_CLOUD_KEY_FILE") or None,
                   metavar="FILE", help="the cloud key that signs the link (default DIR/cloud.key)")
    p.set_defaults(func=cmd_portal_link)

    cli_jobs.add_commands(sub, common)
    customer_cli.add_commands(sub, common)
    csv_cli.add_commands(sub, common)
    cli_merges.add_commands(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace, DataDir], int] = args.func
    try:
        config_file.apply(parser, args, argv, os.environ)
        if args.data is None:
            raise ConfigError(
                f"the data directory is required: --data, {config_file.ENV_PREFIX}DATA or data in the config file",
                field="data")
        daemon = args.command == "serve" or (args.command == "reconcile" and not args.periodic)
        level = "INFO" if daemon and args.log_level == "WARNING" else args.log_level
        configure_logging(level, args.log_format)
        args.dsn = dsn_from(args.dsn)
        return func(args, DataDir(args.data))
    except ConfigError as exc:
        field = f" ({exc.field})" if exc.field else ""
        sys.stderr.write(f"{PROG}: error{field}: {exc.message}\n")
        return 2
    except _Fail as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return exc.status
    except StoreError as exc:
        sys.stderr.write(f"{PROG}: database error: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
