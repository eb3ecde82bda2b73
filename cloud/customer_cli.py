"""``loyalty-cloud customer erase BRAND CUSTOMER_ID --actor WHO --reason WHY``.

Erases the customer's personal data (``cloud.erasure``) and prints the
erasure record as JSON (ids, version, actor, reason, counts of rows
scrubbed: never the erased values). With the portal secret at hand
(``--portal-secret-file``, else ``DIR/portal.secret`` when it exists) the
customer's portal sign-in codes and attempt counters go too. Same exit codes
as ``cli``: 2 for bad input (nothing changed), 1 when the database fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from .app import wall_clock_ms
from .checks import check_id
from .cli_common import out, require_ledger, with_storage
from .config import DataDir
from .erasure import ErasureRecord, check_erasure
from .errors import ConfigError
from .otp import PortalKeys, contact_hashes
from .portal import PORTAL_SECRET_FILE
from .secret_files import load_secret
from .storage import Storage


def _portal_keys(args: argparse.Namespace, data: DataDir) -> PortalKeys | None:
    path: Path | None = args.portal_secret_file
    if path is None:
        path = data.path / PORTAL_SECRET_FILE
        if not path.exists():
            return None
    secret = load_secret(path, "portal_secret_file")
    if len(secret) < 16:
        raise ConfigError("the portal secret file must hold at least 16 bytes", field="portal_secret_file")
    return PortalKeys(secret)


def cmd_customer_erase(args: argparse.Namespace, data: DataDir) -> int:
    check_id("brand_id", args.brand_id)
    check_erasure(args.actor, args.reason)
    require_ledger(args, data)
    keys = _portal_keys(args, data)

    async def erase(storage: Storage) -> ErasureRecord:
        hashes: list[str] = []
        customer = await storage.get_customer(args.customer_id)
        if keys is not None and customer is not None and customer.brand_id == args.brand_id:
            hashes = contact_hashes(keys, args.brand_id, customer.phone, customer.email)
        return await storage.erase_customer(args.brand_id, args.customer_id, args.actor, args.reason,
                                            wall_clock_ms(), contact_hashes=hashes)

    record = with_storage(args, data, erase)
    out(json.dumps(dataclasses.asdict(record)))
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    customer = sub.add_parser("customer", help="customers' personal data").add_subparsers(
        dest="action", required=True)
    p = customer.add_parser("erase", parents=[common],
                            help="erase a customer's personal data everywhere; the ledger keeps the amounts")
    p.add_argument("brand_id")
    p.add_argument("customer_id")
    p.add_argument("--actor", required=True, help="who asked for it (no personal data of the customer)")
    p.add_argument("--reason", required=True, help="why, e.g. a request's reference (no personal data)")
    p.add_argument("--portal-secret-file", type=Path,
                   default=os.environ.get("LOYALTY_CLOUD_PORTAL_SECRET_FILE") or None, metavar="FILE",
                   help=f"the portal secret (default DIR/{PORTAL_SECRET_FILE} if it exists)")
    p.set_defaults(func=cmd_customer_erase)
