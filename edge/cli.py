"""``loyalty-edge``: init (by claim token or by hand), serve, pair, terminals, status, rotate-key, discover."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
import urllib.request
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import ProtocolError, key_id_for, public_bytes, uuid7
from protocol.key_messages import Enrollment, StoreKeyRotated
from runtime.logsetup import configure as configure_logging

from .cloud_client import CloudClient
from .cloud_trust import pin
from .config import ConfigError, EdgeConfig, build_config, load_config, write_config
from .db import connect, migrate
from .errors import CloudRefused, CloudUnavailable
from .keyfile import KeyFileError, create_key, load_key
from .store import EdgeStore, set_meta
from .terminals import create_pairing_code, list_terminals, revoke_terminal

log = logging.getLogger(__name__)


def _config_path(args: argparse.Namespace) -> Path:
    if args.config:
        return Path(args.config)
    return Path(args.data) / "edge.toml"


def _load(args: argparse.Namespace) -> EdgeConfig:
    return load_config(_config_path(args))


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _claim(args: argparse.Namespace, key: Ed25519PrivateKey) -> Enrollment:
    from .enroll import claim

    pinned = bytes.fromhex(args.cloud_public_key) if args.cloud_public_key else None
    async with CloudClient(args.cloud_url) as client:
        return await claim(client, args.claim_token, key, _now_ms, pinned=pinned)


def cmd_init(args: argparse.Namespace) -> int:
    data = Path(args.data).resolve()
    if not args.claim_token and not (args.store_id and args.cloud_public_key):
        print("error: give --claim-token (from `loyalty-cloud store add`), or both --store-id and "
              "--cloud-public-key", file=sys.stderr)
        return 2
    values = {
        "data_dir": str(data),
        "store_id": args.store_id,
        "cloud_url": args.cloud_url,
        "cloud_public_key": args.cloud_public_key,
        "host": args.host,
        "port": args.port,
        "zeroconf": not args.no_zeroconf,
        "interfaces": args.interface or [],
        "sync_interval": args.sync_interval,
        "default_region": args.default_region,
    }
    if args.key_file:
        values["key_file"] = str(Path(args.key_file).resolve())
    # every setting is checked before the cloud hears of this node (the claim fills in the two it answers)
    probe_key = public_bytes(Ed25519PrivateKey.generate().public_key()).hex()
    config = build_config({**values, "store_id": args.store_id or "enrolling",
                           "cloud_public_key": args.cloud_public_key or probe_key}, env={})
    path = Path(args.config) if args.config else data / "edge.toml"
    if path.exists() and not args.force:
        print(f"{path} exists; pass --force to rewrite it", file=sys.stderr)
        return 2
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)
    key = load_key(config.key_path) if config.key_path.exists() else create_key(config.key_path)
    enrolled: dict[str, object] = {}
    cloud_key_version = 0
    if args.claim_token:
        try:
            enrollment = asyncio.run(_claim(args, key))
        except (CloudRefused, CloudUnavailable, ProtocolError) as exc:
            print(f"error: enrollment failed, nothing was registered for this node: {exc}", file=sys.stderr)
            return 1
        if args.store_id and args.store_id != enrollment.store_id:
            print(f"error: the claim token is for store {enrollment.store_id}, not {args.store_id}", file=sys.stderr)
            return 2
        values.update(store_id=enrollment.store_id, cloud_public_key=enrollment.cloud_public_key.hex())
        cloud_key_version = enrollment.cloud_key_version
        enrolled = {"brand_id": enrollment.brand_id, "cloud_key_id": enrollment.cloud_key_id,
                    "cloud_key_version": cloud_key_version}
    config = build_config(values, env={})
    EdgeStore.initialise(config.db_path)
    conn = connect(config.db_path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        if conn.execute("SELECT 1 FROM meta WHERE key = 'node_id'").fetchone() is None:
            set_meta(conn, "node_id", uuid7(_now_ms()))
        set_meta(conn, "store_id", config.store_id)
        pin(config.cloud_key_bytes(), cloud_key_version, _now_ms())(conn)
        conn.execute("COMMIT")
    finally:
        conn.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_config(path, config)
    path.chmod(0o600)
    public = key.public_key()
    print(json.dumps({"store_id": config.store_id, "key_id": key_id_for(public),
                      "public_key": public_bytes(public).hex(), "config": str(path), **enrolled}))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .app import serve

    config = _load(args)
    configure_logging(args.log_level, config.log_format)
    load_key(config.key_path)  # fail now, with the reason, not inside start-up

    def ready(url: str) -> None:
        print(f"listening on {url}", flush=True)

    from .backup import EdgeRunning

    try:
        asyncio.run(serve(config, on_ready=ready))
    except EdgeRunning as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_pair(args: argparse.Namespace) -> int:
    config = _load(args)
    conn = connect(config.db_path)
    try:
        migrate(conn)
        conn.execute("BEGIN IMMEDIATE")
        code = create_pairing_code(conn, int(time.time() * 1000))
        conn.execute("COMMIT")
    finally:
        conn.close()
    if args.json:
        print(json.dumps({"code": code, "expires_in_s": 600}))
    else:
        print(f"Pairing code: {code}  (valid 10 minutes, once)")
        print("On the terminal: POST /v1/pair {\"code\": \"...\", \"name\": \"Till 1\"}")
    return 0


def cmd_terminals(args: argparse.Namespace) -> int:
    config = _load(args)
    conn = connect(config.db_path)
    try:
        if args.action == "revoke":
            conn.execute("BEGIN IMMEDIATE")
            done = revoke_terminal(conn, args.terminal_id, int(time.time() * 1000))
            conn.execute("COMMIT")
            if not done:
                print(f"no active terminal {args.terminal_id}", file=sys.stderr)
                return 1
            print(f"revoked {args.terminal_id} (takes effect within 5 seconds)")
        else:
            for terminal in list_terminals(conn):
                print(json.dumps(terminal))
    finally:
        conn.close()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    config = _load(args)
    url = f"http://{config.host}:{config.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            data = json.load(response)
    except OSError as exc:
        print(f"the edge does not answer at {url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2))
    return 0 if data.get("status") == "ok" else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    from . import doctor

    checks = doctor.run(_config_path(args))
    if args.json:
        print(json.dumps([{"name": c.name, "ok": c.ok, "detail": c.detail, "fix": c.fix} for c in checks]))
    else:
        print(doctor.report(checks))
    return 0 if all(c.ok for c in checks) else 1


def cmd_backup(args: argparse.Namespace) -> int:
    from .backup import BackupError, backup

    config = _load(args)
    try:
        print(json.dumps(backup(config.db_path, Path(args.file))))
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from .backup import BackupError, restore

    config = _load(args)
    try:
        print(json.dumps(restore(config.db_path, Path(args.file), cloud_last_seq=args.cloud_last_seq)))
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_rotate_key(args: argparse.Namespace) -> int:
    """A new store key, announced to the cloud (signed by the old and the new), then switched to."""
    from .key_rotation import announce, prepare, switch

    config = _load(args)
    plan = prepare(config)

    async def run() -> StoreKeyRotated:
        async with CloudClient(config.cloud_url) as client:
            return await announce(plan, config.store_id, client, _now_ms)

    try:
        answer = asyncio.run(run())
    except (CloudRefused, CloudUnavailable, ProtocolError) as exc:
        print(f"error: the cloud did not take the new key; the old one stays in use ({exc}). Run rotate-key "
              f"again: it reuses {plan.new_path}", file=sys.stderr)
        return 1
    switch(plan, config.key_path)
    print(json.dumps({"old_key_id": plan.old_key_id, "key_id": plan.key_id,
                      "old_key_expires_at": answer.old_key_expires_at,
                      "key_file": str(config.key_path), "batches_waiting": plan.batches_waiting}))
    print("a running edge signs with the new key from its next sync round (under systemd: restart it); batches "
          "cut before are sent under the old key until it expires", file=sys.stderr)
    return 0


def cmd_technician_password(args: argparse.Namespace) -> int:
    from .technician import hash_password

    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass("Technician password: ")
        if getpass.getpass("Again: ") != password:
            print("the two passwords differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\n")
    try:
        hashed = hash_password(password)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f'technician_password_hash = "{hashed}"')
    return 0


def cmd_discover(args: argparse.Namespace) -> int:
    from .discovery import discover_edges, format_edges

    edges = asyncio.run(discover_edges(args.timeout, interfaces=args.interface or None, store_id=args.store_id))
    print(format_edges(edges))
    return 0 if edges else 1


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="loyalty-edge", description="Offline-first loyalty node for one store")
    top.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = top.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        group = p.add_mutually_exclusive_group(required=True)
        group.add_argument("--data", help="data directory holding edge.toml")
        group.add_argument("--config", help="path of edge.toml")
        return p

    init = sub.add_parser("init", help="provision this node: key pair, enrollment, database, config")
    init.add_argument("--data", required=True)
    init.add_argument("--cloud-url", required=True)
    init.add_argument("--claim-token", help="from `loyalty-cloud store add`: enroll, learn the store id and the cloud "
                      "key (only the public key leaves this node)")
    init.add_argument("--store-id", help="needed without --claim-token (else checked against the token's store)")
    init.add_argument("--cloud-public-key", help="the cloud's Ed25519 public key (hex), pinned; needed without "
                      "--claim-token (else the enrollment must come from this key)")
    init.add_argument("--host", default="127.0.0.1")
    init.add_argument("--port", type=int, default=8700)
    init.add_argument("--interface", action="append", help="IP address to serve zeroconf on (repeatable)")
    init.add_argument("--no-zeroconf", action="store_true")
    init.add_argument("--sync-interval", type=float, default=5.0)
    init.add_argument("--default-region", default="", metavar="CC",
                      help="country for phones typed without a country code, e.g. CA or FR")
    init.add_argument("--force", action="store_true", help="rewrite an existing edge.toml (the key is kept)")
    init.add_argument("--config", help="where to write edge.toml (default: DATA/edge.toml)")
    init.add_argument("--key-file", help="where the signing key lives (default: DATA/edge.key)")
    init.set_defaults(func=cmd_init)

    with_config(sub.add_parser("serve", help="run the node")).set_defaults(func=cmd_serve)
    pair = with_config(sub.add_parser("pair", help="show a one-time pairing code for a terminal"))
    pair.add_argument("--json", action="store_true")
    pair.set_defaults(func=cmd_pair)
    terminals = with_config(sub.add_parser("terminals", help="list or revoke paired terminals"))
    terminals.add_argument("action", choices=["list", "revoke"])
    terminals.add_argument("terminal_id", nargs="?")
    terminals.set_defaults(func=cmd_terminals)
    with_config(sub.add_parser("status", help="the node's health verdict")).set_defaults(func=cmd_status)
    doctor = with_config(sub.add_parser(
        "doctor", help="check config, key, database, disk, cloud and clock; say what to do about each failure"))
    doctor.add_argument("--json", action="store_true")
    doctor.set_defaults(func=cmd_doctor)
    backup = with_config(sub.add_parser("backup", help="online copy of the database, outbox included (while serving)"))
    backup.add_argument("file", help="the backup file to create")
    backup.set_defaults(func=cmd_backup)
    restore = with_config(sub.add_parser(
        "restore", help="put a backup back (edge stopped); refuses one behind the batch chain"))
    restore.add_argument("file", help="a file made by loyalty-edge backup")
    restore.add_argument("--cloud-last-seq", type=int, default=None,
                         help="the store's seq in `loyalty-cloud store list` (needed when the database is lost)")
    restore.set_defaults(func=cmd_restore)
    with_config(sub.add_parser(
        "rotate-key", help="a new signing key, announced to the cloud (signed by the old and the new key), "
        "then switched to")).set_defaults(func=cmd_rotate_key)
    sub.add_parser(
        "technician-password",
        help="hash a technician password (stdin) into the edge.toml line that opens /status on the LAN",
    ).set_defaults(func=cmd_technician_password)
    discover = sub.add_parser("discover", help="find edges on the LAN by zeroconf")
    discover.add_argument("--timeout", type=float, default=3.0)
    discover.add_argument("--interface", action="append")
    discover.add_argument("--store-id")
    discover.set_defaults(func=cmd_discover)
    return top


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    configure_logging(args.log_level, "text")
    if args.command == "terminals" and args.action == "revoke" and not args.terminal_id:
        p.error("terminals revoke needs a terminal id")
    try:
        code: int = args.func(args)
    except (ConfigError, KeyFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
