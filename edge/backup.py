"""Online backup and guarded restore of the edge database.

The backup uses SQLite's online backup API: a consistent copy, outbox and
stored batches included, taken while the node serves.

The rule a restore enforces: **a backup may replace the database only if it
is not behind the batch chain.** The cloud knows each store by a gap-free
sequence of batches chained by hash. A backup that ends at batch B put back
on a node whose chain reached L > B would cut a new batch B+1 with other ops
under a sequence number the cloud already holds: the cloud answers
``batch_conflict`` forever, and ops written after the backup are gone. So:

- while the edge serves (it holds ``edge.lock``), restore refuses;
- if the current database is readable and ahead of the backup (more
  batches, or ops not in the backup's outbox), restore refuses: nothing
  acknowledged may be dropped;
- if it is not readable (the reason to restore), the operator passes the
  cloud's sequence for the store (``loyalty-cloud store list``) and restore
  refuses a backup that ends before it. A backup whose last batch the cloud
  holds already is fine: that batch is resent byte for byte and the cloud
  answers its stored ack, so nothing is applied twice.

The replaced file is kept next to the new one, never deleted.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .db import connect

LOCK_FILE = "edge.lock"


class BackupError(Exception):
    pass


class EdgeRunning(BackupError):
    pass


@dataclass(frozen=True, slots=True)
class Position:
    """How far a database has come: its newest batch, acknowledged batch and op."""

    last_batch: int
    last_acked_batch: int
    last_op: int
    unsynced_ops: int


def position(path: Path) -> Position:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        batch, acked = conn.execute(
            "SELECT COALESCE(MAX(seq), 0), COALESCE(MAX(CASE WHEN acked_at IS NOT NULL THEN seq END), 0) FROM batches"
        ).fetchone()
        last_op, unsynced = conn.execute(
            "SELECT COALESCE(MAX(seq), 0), COALESCE(SUM(status IS NULL), 0) FROM outbox"
        ).fetchone()
    finally:
        conn.close()
    return Position(int(batch), int(acked), int(last_op), int(unsynced))


@contextmanager
def serving_lock(data_dir: Path) -> Iterator[None]:
    """Held by ``serve`` for its whole life; restore takes it too, so they exclude each other."""
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise EdgeRunning(f"an edge is serving {data_dir}; stop it first (systemctl stop loyalty-edge)") from exc
        yield
    finally:
        os.close(fd)


def _copy(source: Path, target: Path) -> None:
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=10)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        dst = sqlite3.connect(target)
        try:
            src.backup(dst, pages=1024)
            dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            check = dst.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            dst.close()
    finally:
        src.close()
    if check != "ok":
        target.unlink()
        raise BackupError(f"the copy failed its integrity check: {check}")
    with target.open("rb") as handle:
        os.fsync(handle.fileno())


def backup(db_path: Path, out: Path) -> dict[str, Any]:
    if out.exists():
        raise BackupError(f"{out} exists; choose a new file")
    try:
        _copy(db_path, out)
    except sqlite3.Error as exc:
        out.unlink(missing_ok=True)
        raise BackupError(f"backup of {db_path} failed: {exc}") from exc
    return {"backup": str(out), **asdict(position(out))}


def restore(db_path: Path, source: Path, *, cloud_last_seq: int | None = None) -> dict[str, Any]:
    try:
        incoming = position(source)
    except sqlite3.Error as exc:
        raise BackupError(f"{source} is not a readable edge backup: {exc}") from exc
    with serving_lock(db_path.parent):
        current: Position | None = None
        if db_path.exists():
            try:
                current = position(db_path)
            except sqlite3.Error:
                current = None  # unreadable: the reason to restore
        if current is not None:
            if current.last_batch > incoming.last_batch or current.last_op > incoming.last_op:
                raise BackupError(
                    f"the backup is behind this database (batch {incoming.last_batch} / op {incoming.last_op}, "
                    f"database at batch {current.last_batch} / op {current.last_op}): restoring it would drop "
                    "acknowledged ops and rewind the batch chain the cloud holds"
                )
        elif cloud_last_seq is None:
            raise BackupError(
                "the current database is missing or unreadable: pass --cloud-last-seq with the store's seq from "
                "`loyalty-cloud store list`, so a backup behind the cloud's chain is refused"
            )
        if cloud_last_seq is not None and cloud_last_seq > incoming.last_batch:
            raise BackupError(
                f"the cloud holds batch {cloud_last_seq} of this store, the backup ends at batch "
                f"{incoming.last_batch}: the ops of the batches between are not in the backup and the chain would "
                "rewind"
            )
        staged = db_path.with_name(db_path.name + ".restoring")
        staged.unlink(missing_ok=True)
        try:
            _copy(source, staged)
        except sqlite3.Error as exc:
            staged.unlink(missing_ok=True)
            raise BackupError(f"cannot copy {source}: {exc}") from exc
        kept = None
        stamp = time.strftime("%Y%m%dT%H%M%S")
        # The old WAL must never meet the new file: SQLite would replay it into it.
        for suffix in ("", "-wal", "-shm"):
            old = db_path.with_name(db_path.name + suffix)
            if old.exists():
                moved = db_path.with_name(f"{db_path.name}.replaced-{stamp}{suffix}")
                old.rename(moved)
                kept = kept or moved
        staged.rename(db_path)
        conn = connect(db_path)  # back to WAL, as the edge runs it
        conn.close()
        dir_fd = os.open(db_path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return {"restored": str(source), "replaced": None if kept is None else str(kept), **asdict(incoming)}
