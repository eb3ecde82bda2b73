"""``loyalty-cloud reconcile`` and ``loyalty-cloud report``.

``reconcile --workers N`` applies received batches with N worker processes
(each one ``worker.Worker`` with a connection pool of its own) until SIGTERM,
or until the inbox is empty with ``--drain``; it needs the signing key, like
``serve``. ``reconcile --periodic`` runs the periodic job once (``periodic``:
expiry and merge hooks, the integrity audit, the liability snapshot, silent
stores) and needs no key; it exits 1 when a step failed or the audit found a
problem. ``report NAME --brand B`` prints a report as JSON or CSV.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import multiprocessing
import os
import signal
import sys
from pathlib import Path
from typing import Any

from .app import wall_clock_ms
from .checks import check_id
from .cli_common import KEY_FILE_ENV, MAX_WORKERS, Fail, out, require_ledger, signing_key, with_storage
from .config import DataDir, make_storage
from .keys import CloudKey, load_key
from .periodic import SILENT_HOURS, run_periodic
from .reports import REPORTS, parse_query, run_report
from .sql import PERIODS
from .worker import POLL_INTERVAL, Worker

log = logging.getLogger(__name__)


# ---- reconcile: the workers


async def _run_worker(dsn: str | None, data: Path, key: CloudKey, drain: bool, poll_interval: float) -> int:
    storage = make_storage(dsn, DataDir(data))
    await storage.open(wall_clock_ms())
    worker = Worker(storage, key, wall_clock_ms)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    try:
        if drain:
            return await worker.drain()
        await worker.run(poll_interval=poll_interval)
        return 0
    finally:
        await storage.close()


def _worker_process(dsn: str | None, data: str, key_file: str, drain: bool, poll_interval: float,
                    log_level: str) -> None:
    """One worker in a process of its own (the target of a spawned ``multiprocessing.Process``)."""
    logging.basicConfig(level=log_level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s %(name)s[{os.getpid()}]: %(message)s")
    applied = asyncio.run(_run_worker(dsn, Path(data), load_key(Path(key_file)), drain, poll_interval))
    if drain:
        log.info("drained: %d batches applied by this worker", applied)


def cmd_reconcile(args: argparse.Namespace, data: DataDir) -> int:
    if args.periodic:
        return _periodic(args, data)
    if not 1 <= args.workers <= MAX_WORKERS:
        raise Fail(f"--workers must be 1..{MAX_WORKERS}", 2)
    key, key_file = signing_key(args, data)
    if args.workers == 1:
        applied = asyncio.run(_run_worker(args.dsn, data.path, key, args.drain, args.poll_interval))
        if args.drain:
            out(f"drained: {applied} batches applied")
        return 0
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_worker_process, name=f"reconciler-{n}", args=(
            args.dsn, str(data.path), str(key_file), args.drain, args.poll_interval,
            logging.getLevelName(logging.getLogger().getEffectiveLevel())))
        for n in range(args.workers)
    ]
    stopping = False

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for process in workers:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    # Set before the first worker starts: a SIGTERM must never leave workers running without us.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for process in workers:
        if not stopping:
            process.start()
    if stopping:  # the signal came while one was starting
        stop(signal.SIGTERM, None)
    for process in workers:
        if process.pid is not None:
            process.join()
    # A worker stopped before it set its handler dies of the SIGTERM itself: that is a stop too.
    clean = {0, -signal.SIGTERM} if stopping else {0}
    failed = [f"{p.name} (exit {p.exitcode})" for p in workers if p.pid is not None and p.exitcode not in clean]
    if failed:
        raise Fail(f"workers {', '.join(failed)} failed (see the log)", 1)
    if args.drain:
        out(f"drained by {args.workers} workers")
    return 0


# ---- reconcile --periodic


def _periodic(args: argparse.Namespace, data: DataDir) -> int:
    require_ledger(args, data)
    results = with_storage(args, data, lambda s: run_periodic(
        s, wall_clock_ms(), silent_hours=args.silent_hours, full_audit=args.full_audit))
    for result in results:
        out(json.dumps(dataclasses.asdict(result)))
    failed = [r.step for r in results if not r.ok]
    if failed:
        raise Fail(f"periodic steps need attention: {', '.join(failed)}", 1)
    return 0


# ---- report


def cmd_report(args: argparse.Namespace, data: DataDir) -> int:
    check_id("brand_id", args.brand)
    params = {name: value for name, value in (("from", args.date_from), ("to", args.date_to),
                                              ("period", args.period)) if value is not None}
    query = parse_query(args.brand, params, wall_clock_ms())
    require_ledger(args, data)
    report = with_storage(args, data, lambda s: run_report(s, args.report, query))
    if args.format == "csv":
        sys.stdout.write(report.to_csv())
    else:
        out(json.dumps(report.to_json()))
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("reconcile", parents=[common], help="apply received batches; or the periodic job")
    p.add_argument("--workers", type=int, default=1, help="worker processes (each skips stores another holds)")
    p.add_argument("--drain", action="store_true", help="exit once no batch is waiting")
    p.add_argument("--poll-interval", type=float, default=POLL_INTERVAL, metavar="S",
                   help="seconds between looks at an empty inbox")
    p.add_argument("--periodic", action="store_true",
                   help="run the periodic job once: expiry, merges, audits, liability snapshot, silent stores")
    p.add_argument("--silent-hours", type=float, default=SILENT_HOURS, help="with --periodic: alert after this")
    p.add_argument("--full-audit", action="store_true", help="with --periodic: check every chain from batch 1")
    p.add_argument(
        "--key-file", type=Path, default=os.environ.get(KEY_FILE_ENV) or None, metavar="FILE",
        help=f"the signing key (default DIR/cloud.key; env {KEY_FILE_ENV}); not needed with --periodic",
    )
    p.set_defaults(func=cmd_reconcile)

    p = sub.add_parser("report", parents=[common], help="a report of one brand, as JSON or CSV")
    p.add_argument("report", choices=sorted(REPORTS))
    p.add_argument("--brand", required=True)
    p.add_argument("--from", dest="date_from", default=None, metavar="YYYY-MM-DD", help="first day (UTC)")
    p.add_argument("--to", dest="date_to", default=None, metavar="YYYY-MM-DD", help="last day, included")
    p.add_argument("--period", choices=PERIODS, default=None)
    p.add_argument("--format", choices=("json", "csv"), default="json")
    p.set_defaults(func=cmd_report)
