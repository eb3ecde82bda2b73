"""``loyalty-cloud merges BRAND``: the audit of duplicate-profile merges (``merges``), as JSON lines.

``--run`` merges what collides now (as the periodic job's step does) and prints its summary first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from .app import wall_clock_ms
from .checks import check_id
from .cli_common import Fail, out, require_ledger, with_storage
from .config import DataDir
from .merges import MergeRecord, MergeSummary
from .storage import Storage


def cmd_merges(args: argparse.Namespace, data: DataDir) -> int:
    check_id("brand_id", args.brand_id)
    require_ledger(args, data)

    async def run(storage: Storage) -> tuple[bool, MergeSummary | None, list[MergeRecord]]:
        if args.brand_id not in {b.brand_id for b in await storage.list_brands()}:
            return False, None, []
        summary = await storage.merge_duplicates(wall_clock_ms(), brand_id=args.brand_id) if args.run else None
        return True, summary, await storage.list_merges(args.brand_id)

    known, summary, merges = with_storage(args, data, run)
    if not known:
        raise Fail(f"no brand {args.brand_id!r}", 2)
    if summary is not None:
        out(json.dumps({"run": {"collisions": summary.collisions, "merged": summary.merged}}))
    for merge in merges:
        out(json.dumps(dataclasses.asdict(merge)))
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("merges", parents=[common],
                       help="duplicate profiles merged into the older one (card code or phone), as JSON lines")
    p.add_argument("brand_id")
    p.add_argument("--run", action="store_true", help="merge what collides now first (as the periodic job does)")
    p.set_defaults(func=cmd_merges)
