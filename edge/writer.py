"""One writer thread for the edge database, with group commit.

Every write is a function of a ``sqlite3.Connection`` run on one dedicated
thread. The thread takes whatever jobs are waiting, runs them in ONE
``BEGIN IMMEDIATE`` transaction (each inside its own savepoint, so a job
that raises rolls back alone), commits once, and only then answers the
callers. One fsync serves the whole group, so durability does not cap
throughput, and no caller hears "done" before its rows are on disk.

There is no fixed wait for a group to fill: the thread commits as soon as it
is free, so a lone write pays one fsync and a burst shares them.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .db import connect
from .errors import StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")
Job = Callable[[sqlite3.Connection], Any]
MAX_GROUP = 512


@dataclass
class WriterStats:
    commits: int = 0
    jobs: int = 0
    last_group: int = 0
    last_commit_ms: float = 0.0
    failures: int = 0
    last_error: str | None = None
    group_sizes: list[int] = field(default_factory=list)


@dataclass
class _Item:
    job: Job
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


class Writer:
    """The only path by which the edge changes its database."""

    def __init__(self, path: Path, *, connect_fn: Callable[[Path], sqlite3.Connection] = connect) -> None:
        self._path = path
        self._connect = connect_fn
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self.stats = WriterStats()
        # Metrics hook: (group size, seconds) after each commit, on this thread.
        self.observer: Callable[[int, float], None] | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="edge-writer", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise StoreError(f"cannot open the database: {self._start_error}") from self._start_error

    async def close(self) -> None:
        """Finish every queued job, then stop the thread."""
        if self._thread is None:
            return
        self._queue.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._thread = None

    async def run(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``job`` in the next group commit and return its result once durable."""
        if self._thread is None:
            raise StoreError("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Item(job, loop, future))
        return await future

    # ------------------------------------------------------------ thread side

    def _run(self) -> None:
        try:
            conn = self._connect(self._path)
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                group = [first]
                stop = False
                while len(group) < MAX_GROUP:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                        break
                    group.append(item)
                self._commit_group(conn, group)
                if stop:
                    return
        finally:
            conn.close()

    def _commit_group(self, conn: sqlite3.Connection, group: list[_Item]) -> None:
        started = time.perf_counter()
        outcomes: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for index, item in enumerate(group):
                conn.execute(f"SAVEPOINT job{index}")
                try:
                    outcomes.append((True, item.job(conn)))
                    conn.execute(f"RELEASE job{index}")
                except sqlite3.Error:
                    raise  # the database itself failed: the whole group fails
                except BaseException as exc:  # noqa: BLE001 - delivered to the caller
                    conn.execute(f"ROLLBACK TO job{index}")
                    conn.execute(f"RELEASE job{index}")
                    outcomes.append((False, exc))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback(conn)
            self.stats.failures += 1
            self.stats.last_error = str(exc)
            log.error("group commit of %d writes failed: %s", len(group), exc)
            error = StoreError(f"the local database refused the write: {exc}")
            error.__cause__ = exc
            outcomes = [(False, error)] * len(group)
        else:
            stats = self.stats
            stats.commits += 1
            stats.jobs += len(group)
            stats.last_group = len(group)
            elapsed = time.perf_counter() - started
            stats.last_commit_ms = elapsed * 1000
            if self.observer is not None:
                try:
                    self.observer(len(group), elapsed)
                except Exception:  # a metrics bug must not strand the callers below
                    log.exception("commit observer failed")
            if len(stats.group_sizes) >= 1024:
                del stats.group_sizes[:512]
            stats.group_sizes.append(len(group))
        # One wake-up of each event loop per group, not one per write.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for item, (ok, value) in zip(group, outcomes, strict=True):
            by_loop.setdefault(item.loop, []).append((item.future, ok, value))
        for loop, results in by_loop.items():
            loop.call_soon_threadsafe(_resolve_all, results)

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.error("rollback failed: %s", exc)


def _resolve_all(results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in results:
        if future.cancelled():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
