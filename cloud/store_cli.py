"""``loyalty-cloud`` verbs for enrollment, store keys, revocation and the cloud key.

    store add STORE --brand B            a store that awaits its edge, and its one-time claim token
    store token STORE                    a new claim token (the first expired, or the box was replaced)
    store revoke STORE --reason TEXT     refuse everything the store signs from now on
    store rotate-key STORE               the store's keys and their state; --finish ends the overlap
                                         window now, --overlap-hours H sets it to end H hours from now
    key rotate                           make the next cloud key and announce it to the edges
    key status                           the cloud key versions

Same exit codes as ``cli``: 2 for bad input (nothing changed), 1 when the
database fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from .app import wall_clock_ms
from .checks import check_id, check_name
from .cli_common import on_ledger, out
from .cloud_keyring import next_key, rotate_cloud_key
from .config import DataDir
from .keys import load_key
from .model import KeyRecord
from .storage import Storage
from .store_keys_model import (
    CLAIM_TOKEN_TTL_MS,
    CLOUD_KEY_OVERLAP_MS,
    hash_claim_token,
    key_state,
    new_claim_token,
    when,
)

HOUR_MS = 3600 * 1000
MAX_HOURS = 366 * 24


def hours_arg(text: str) -> float:
    try:
        hours = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError("a number of hours") from exc
    if not 0 < hours <= MAX_HOURS:
        raise argparse.ArgumentTypeError(f"between 0 and {MAX_HOURS} hours")
    return hours


def _print_token(args: argparse.Namespace, store_id: str, brand_id: str, token: str, expires_at: int) -> None:
    if args.json:
        out(json.dumps({"store_id": store_id, "brand_id": brand_id, "claim_token": token, "expires_at": expires_at}))
        return
    out(f"store {store_id} ({brand_id}) awaits its edge")
    out(f"claim token (shown once, single use, valid until {when(expires_at)}): {token}")
    out(f"in the store: loyalty-edge init --data /var/lib/loyalty-edge --cloud-url <this cloud's URL> "
         f"--claim-token {token} ...")


def cmd_store_add_to_claim(args: argparse.Namespace, data: DataDir) -> int:
    """``store add`` without --public-key: the edge enrolls itself with a claim token."""
    now = wall_clock_ms()
    token = new_claim_token()
    expires_at = now + int(args.token_hours * HOUR_MS)
    store = on_ledger(args, data, lambda s: s.add_store_to_claim(
        args.store_id, args.brand, hash_claim_token(token), expires_at, now))
    _print_token(args, store.store_id, store.brand_id, token, expires_at)
    return 0


def cmd_store_token(args: argparse.Namespace, data: DataDir) -> int:
    check_id("store_id", args.store_id)
    now = wall_clock_ms()
    token = new_claim_token()
    expires_at = now + int(args.token_hours * HOUR_MS)

    async def issue(storage: Storage) -> str:
        await storage.new_claim_token(args.store_id, hash_claim_token(token), expires_at, now)
        brands = {s.store_id: s.brand_id for s in await storage.list_stores()}
        return brands[args.store_id]

    brand_id = on_ledger(args, data, issue)
    _print_token(args, args.store_id, brand_id, token, expires_at)
    return 0


def cmd_store_revoke(args: argparse.Namespace, data: DataDir) -> int:
    check_id("store_id", args.store_id)
    check_name(args.reason, max_len=500)
    store = on_ledger(args, data, lambda s: s.revoke_store(args.store_id, args.reason, wall_clock_ms()))
    out(f"store {store.store_id} revoked at {when(store.revoked_at or 0)}: {store.revoke_reason}")
    return 0


def _key_row(key: KeyRecord, now: int) -> dict[str, Any]:
    return {"key_id": key.key_id, "state": key_state(key.expires_at, key.revoked_at, key.replaced_by, now),
            "created_at": key.created_at, "expires_at": key.expires_at, "replaced_by": key.replaced_by,
            "revoked_at": key.revoked_at}


def cmd_store_rotate_key(args: argparse.Namespace, data: DataDir) -> int:
    check_id("store_id", args.store_id)
    now = wall_clock_ms()
    if args.finish:
        keys = on_ledger(args, data, lambda s: s.set_key_expiry(args.store_id, now))
    elif args.overlap_hours is not None:
        keys = on_ledger(args, data, lambda s: s.set_key_expiry(args.store_id, now + int(args.overlap_hours * HOUR_MS)))
    else:
        keys = on_ledger(args, data, lambda s: s.store_keys(args.store_id))
    for key in keys:
        row = _key_row(key, now)
        if args.json:
            out(json.dumps(row))
            continue
        detail = ""
        if row["state"] == "retiring":
            detail = f" until {when(key.expires_at or 0)}, replaced by {key.replaced_by}"
        elif row["state"] == "expired":
            detail = f" since {when(key.expires_at or 0)}, replaced by {key.replaced_by}"
        out(f"{key.key_id}\t{row['state']}{detail}")
    if not keys and not args.json:
        out(f"store {args.store_id} has no key yet (it awaits its edge's claim)")
    return 0


def cmd_key_rotate(args: argparse.Namespace, data: DataDir) -> int:
    current = load_key(args.key_file or data.key_file)
    new_path: Path = args.new_key_file or data.path / "cloud.key.new"
    overlap_ms = int(args.overlap_hours * HOUR_MS)
    data.require()
    new = next_key(new_path)
    record = on_ledger(args, data, lambda s: rotate_cloud_key(s, current, new, overlap_ms, wall_clock_ms()))
    if args.json:
        out(json.dumps({"version": record.version, "key_id": record.key_id, "public_key": record.public_key.hex(),
                         "key_file": str(new_path), "overlap_ms": record.overlap_ms}))
        return 0
    out(f"cloud key version {record.version}: {record.key_id}, in {new_path}")
    out("announced: every edge takes it with its next pull. Switch the service to the new key file")
    out(f"(then restart it); edges keep accepting {current.key_id} for {args.overlap_hours:g} h after they"
         " first see the new key in use.")
    return 0


def cmd_key_status(args: argparse.Namespace, data: DataDir) -> int:
    records = on_ledger(args, data, lambda s: s.cloud_keys())
    for record in records:
        row = dataclasses.asdict(record)
        row["public_key"] = record.public_key.hex()
        row["announcement"] = None if record.announcement is None else record.announcement.hex()
        if args.json:
            out(json.dumps(row))
        else:
            newest = " (newest)" if record is records[-1] else ""
            out(f"v{record.version}\t{record.key_id}\t{when(record.created_at)}{newest}")
    return 0


def add_store_commands(store: Any, common: argparse.ArgumentParser) -> None:
    """The store verbs of this module, on the ``store`` sub-parsers."""
    p = store.add_parser("token", parents=[common], help="a new one-time claim token for a store with no live key")
    p.add_argument("store_id")
    p.add_argument("--token-hours", type=hours_arg, default=CLAIM_TOKEN_TTL_MS / HOUR_MS)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_store_token)
    p = store.add_parser("revoke", parents=[common], help="refuse every batch, pull and key change of a store")
    p.add_argument("store_id")
    p.add_argument("--reason", required=True, help="shown on the store's status page")
    p.set_defaults(func=cmd_store_revoke)
    p = store.add_parser("rotate-key", parents=[common],
                         help="a store's keys and their rotation state; end or set the overlap window")
    p.add_argument("store_id")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--finish", action="store_true", help="replaced keys stop working now")
    group.add_argument("--overlap-hours", type=hours_arg, default=None,
                       help="replaced keys stop working this many hours from now (reopens an ended window)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_store_rotate_key)


def add_key_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    key = sub.add_parser("key", help="the cloud's signing key versions").add_subparsers(dest="action", required=True)
    p = key.add_parser("rotate", parents=[common], help="make the next cloud key and announce it to every edge")
    p.add_argument("--key-file", type=Path, default=os.environ.get("LOYALTY_CLOUD_KEY_FILE") or None,
                   metavar="FILE", help="the newest key (default DIR/cloud.key; env LOYALTY_CLOUD_KEY_FILE)")
    p.add_argument("--new-key-file", type=Path, default=None, metavar="FILE",
                   help="where to write the next key (default DIR/cloud.key.new; never overwritten)")
    p.add_argument("--overlap-hours", type=hours_arg, default=CLOUD_KEY_OVERLAP_MS / HOUR_MS,
                   help="how long edges still accept the old key once they see the new one in use")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_key_rotate)
    p = key.add_parser("status", parents=[common], help="the cloud key versions, oldest first")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_key_status)
