"""What every ``loyalty-cloud`` verb shares: output, failure, the ledger for one command."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from .app import wall_clock_ms
from .config import DataDir, make_storage
from .errors import ConfigError
from .keys import CloudKey, load_key
from .storage import Storage

T = TypeVar("T")
KEY_FILE_ENV = "LOYALTY_CLOUD_KEY_FILE"
#: Reconcilers one command may run (embedded in serve, or processes of reconcile).
MAX_WORKERS = 64


class Fail(Exception):
    """The command failed: ``status`` is the exit code (1: the system or a check failed)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def with_storage(args: argparse.Namespace, data: DataDir, action: Callable[[Storage], Awaitable[T]]) -> T:
    async def run() -> T:
        storage = make_storage(args.dsn, data)
        await storage.open(wall_clock_ms())
        try:
            return await action(storage)
        finally:
            await storage.close()

    return asyncio.run(run())


def require_ledger(args: argparse.Namespace, data: DataDir) -> None:
    """For verbs that need the database but not the signing key, which a
    systemd deployment keeps outside the data directory (as a credential)."""
    data.require()
    if args.dsn is None and not data.db_file.exists():
        raise ConfigError(
            f"{data.path} is not initialised (run `loyalty-cloud init --data {data.path}`)", field="data"
        )


def on_ledger(args: argparse.Namespace, data: DataDir, action: Callable[[Storage], Awaitable[T]]) -> T:
    """Run ``action`` on an initialised ledger (no signing key needed: it may live in a credential)."""
    require_ledger(args, data)
    return with_storage(args, data, action)


def signing_key(args: argparse.Namespace, data: DataDir) -> tuple[CloudKey, Path]:
    """The cloud key (``--key-file``, else the data directory's) and where it was read."""
    if args.key_file is None:
        data.require_initialised(sqlite=args.dsn is None)
        return load_key(data.key_file), data.key_file
    require_ledger(args, data)
    return load_key(args.key_file), args.key_file
