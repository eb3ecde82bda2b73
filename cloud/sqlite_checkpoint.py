"""Copying SQLite's write-ahead log into the database off the writer's path.

By default the connection that commits runs the checkpoint whenever the WAL
passes 1,000 pages. A batch of a thousand ops dirties about that many pages
(random customers and their version index), so every commit also copied its
pages into the database file and fsynced it: measured, a commit of 1,000
balance updates took 42 ms with that and 17 ms without, on the apply path
and holding the single writer.

Here a connection of its own runs ``wal_checkpoint(PASSIVE)`` after commits,
at most every ``interval`` seconds, in its own thread: PASSIVE never waits for
the writer or a reader, and the writer goes on appending meanwhile. The
writer keeps an automatic checkpoint at ``WRITER_CHECKPOINT_PAGES`` as a bound
on the WAL should this one fall behind (it then finds most pages already
copied). Durability does not change: a commit is durable when its WAL frames
are synced, before and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from pathlib import Path

import aiosqlite

log = logging.getLogger(__name__)

#: The writer checkpoints by itself past this many WAL pages (16 MiB of 4 KiB pages).
WRITER_CHECKPOINT_PAGES = 4000
#: A WAL file emptied by a checkpoint is cut back to this size when it restarts.
WAL_SIZE_LIMIT = 64 * 1024 * 1024


class Checkpointer:
    """Runs PASSIVE checkpoints of ``path`` after commits (``committed``), one at a time."""

    def __init__(self, path: Path, *, interval: float = 0.2) -> None:
        self.path = path
        self.interval = interval
        self.runs = 0  # checkpoints run, for tests and diagnostics
        self._due = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Held while a checkpoint runs: SQLite runs one at a time and refuses a second at once.
        self.running = asyncio.Lock()

    def committed(self) -> None:
        """A write transaction committed: checkpoint soon (starts the task on first use)."""
        self._due.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"checkpoint {self.path.name}")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        conn: aiosqlite.Connection | None = None
        try:
            conn = await aiosqlite.connect(self.path, isolation_level=None)
            while True:
                await self._due.wait()
                self._due.clear()
                try:
                    async with self.running:
                        await conn.execute_fetchall("PRAGMA wal_checkpoint(PASSIVE)")
                    self.runs += 1
                except sqlite3.Error:  # the writer's own checkpoint bounds the WAL meanwhile
                    log.warning("checkpointing %s failed; retrying after the next commit", self.path, exc_info=True)
                await asyncio.sleep(self.interval)
        except sqlite3.Error:
            log.exception("cannot open %s to checkpoint it; the writer checkpoints instead", self.path)
        finally:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    await conn.close()
