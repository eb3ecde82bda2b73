"""The reconciler worker: applies received batches, per store in sequence,
across stores in parallel.

Each step is one transaction (``Storage.batch_tx``): claim the oldest inbox
batch that is next in its store's chain, with the store's row locked (on
PostgreSQL ``SKIP LOCKED`` passes over stores another worker holds, so any
number of workers in any number of processes share the inbox without waiting
for each other), load what its ops read (the customers locked), decide its
ops (``reconciler.reconcile``, versions counted from 0), write the rows that
carry no version, then take the brand's change counter (locked to commit),
move the versions past it, seal the ack, write the customers and the batch,
and drop the inbox row (``batch_apply.apply_step``). That ack is what the
edge receives, now or when it resends the batch.

On SQLite the single writer is the limit: workers take turns, whatever their
number, and a step takes up to ``SINGLE_WRITER_GROUP`` waiting batches of one
brand and commits once, so one fsync serves them all. On PostgreSQL a step
is one batch: steps of several held several batches' customers until their
commit, and measured with two workers and 5 % of ops on other stores'
customers, the workers then waited for each other's locks most of the time
(3,328 ops/s with steps of 8, 5,537 with steps of 1).

The batch was verified when it was received (signature, key, store,
sequence and chain); a key revoked since then does not stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from protocol import Batch, OpStatus, ProtocolError, decode_batch

from .batch_apply import Done, Sealer, apply_step
from .erasure import LATE_OP_TABLES
from .errors import StoreError, WriterBusy
from .keys import CloudKey
from .model import BatchOutcome, Claim
from .storage import Storage

log = logging.getLogger(__name__)

#: An idle worker looks at the inbox this often (a batch received in this process wakes it at once).
POLL_INTERVAL = 0.05
#: After a failed step (database away), wait this long before the next.
ERROR_PAUSE = 1.0
#: Batches one SQLite transaction applies at most when the inbox holds that many: one commit (one
#: fsync, each page the batches share written once) serves them all; and the ops it stops adding
#: batches at, so the writer is held under a second (a batch being received, and another
#: process's worker, wait for it: at 8,000 ops, four worker processes waited past SQLite's busy
#: timeout). Measured with one worker, 100 batches of 1,000 ops: steps of 4 or 8 batches apply
#: about 11 % more per second than steps of 1; steps of 2 no more.
SINGLE_WRITER_GROUP = 8
STEP_OPS = 4000


@dataclass(frozen=True, slots=True)
class Applied:
    """One batch applied: its sealed ack and what was decided."""

    store_id: str
    seq: int
    ack: bytes
    outcome: BatchOutcome
    seconds: float


class Worker:
    def __init__(
        self,
        storage: Storage,
        cloud_key: CloudKey,
        clock: Callable[[], int],
        *,
        on_applied: Callable[[Applied], None] | None = None,
        decoded: Callable[[str, int, bytes], Batch | None] | None = None,
        group: int | None = None,
    ) -> None:
        self.storage = storage
        self.cloud_key = cloud_key
        self.clock = clock
        self.on_applied = on_applied
        self.decoded = decoded  # batches this process decoded when it received them
        # Steps of several batches only under the single writer (see the module's docstring).
        self.group = max(1, group or SINGLE_WRITER_GROUP) if storage.single_writer else 1
        self._sealer = Sealer(cloud_key, clock)
        self._failed = False
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()

    async def apply_next(self) -> Applied | None:
        """Apply the next claimable batch in one transaction; None if there is none."""
        applied = await self._apply(1)
        return applied[0] if applied else None

    async def apply_some(self) -> list[Applied]:
        """Apply up to ``group`` claimable batches in one transaction (one after a failed step,
        so that a batch that cannot be applied never holds back the others); [] if there is none.
        Another process holding SQLite's writer past the busy timeout is waited out: its turn comes."""
        while True:
            try:
                applied = await self._apply(1 if self._failed else self.group)
            except WriterBusy:
                if self._stop.is_set():
                    return []
                log.debug("the SQLite writer is busy; trying again")
                continue
            self._failed = False
            return applied

    async def _apply(self, limit: int) -> list[Applied]:
        started = time.perf_counter()
        if not await self.storage.inbox_depth():
            return []  # a read: an idle worker never takes SQLite's write lock
        ahead: dict[tuple[str, int, bytes], Batch] = {}
        if self.storage.single_writer:
            # Decode while another worker holds the writer; kept for the batches this one gets.
            peeked, decoded = self._take(await self.storage.peek_inbox(limit), {})
            ahead = {_key(claim): batch for claim, batch in zip(peeked, decoded, strict=True)}
        async with self.storage.batch_tx() as tx:
            claims, batches = self._take(await tx.claim_batches(limit), ahead)
            done = await apply_step(tx, list(zip(claims, batches, strict=True)), self._sealer)
        # Committed: every batch's ack stands, whatever happens next.
        seconds = time.perf_counter() - started
        applied = []
        for one in done:
            if one.named:
                await self._merge(one.claim.head.brand_id, one.claim.head.store_id, one.claim.seq, one.named)
            self._log(one)
            if one.redacted:
                # The received bytes held an erased customer's data: their old pages go too, before
                # the ack is out (rare: a late op from an edge offline since the erasure).
                await self.storage.reclaim(LATE_OP_TABLES)
            applied.append(Applied(one.claim.head.store_id, one.claim.seq, one.ack, one.outcome, seconds))
        if self.on_applied is not None:
            for each in applied:
                self.on_applied(each)
        return applied

    @staticmethod
    def _log(one: Done) -> None:
        outcome = one.outcome
        log.info(
            "store %s batch %d: %d ops, %d refused, %d applied with a note (see ops.note), %d mismatches,"
            " %d shortfalls",
            one.claim.head.store_id,
            one.claim.seq,
            one.ops,
            sum(1 for r in outcome.results if r.status is OpStatus.REFUSED),
            sum(1 for r in outcome.ops if r.note is not None),
            len(outcome.mismatches),
            len(outcome.shortfalls),
        )

    async def drain(self) -> int:
        """Apply batches until none is claimable; how many were applied."""
        count = 0
        while not self._stop.is_set() and (applied := await self.apply_some()):
            count += len(applied)
        return count

    async def run(self, wake: asyncio.Event | None = None, *, poll_interval: float = POLL_INTERVAL) -> None:
        """Apply batches until ``stop()``; idle, wait for ``wake`` or ``poll_interval``."""
        wake = self._wake = wake or self._wake
        while not self._stop.is_set():
            wake.clear()  # before looking: a batch queued after the look sets it again
            try:
                if await self.apply_some():
                    continue
                pause = poll_interval
            except Exception:  # a worker outlives a failed step: the batches stay in the inbox for the next
                log.exception("applying a batch failed; retrying in %.1f s", ERROR_PAUSE)
                self._failed = True
                pause = ERROR_PAUSE
            if not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), pause)

    async def _merge(self, brand_id: str, store_id: str, seq: int, customer_ids: list[str]) -> None:
        """The batch gave a profile a card code or phone another one holds: merge them now, before
        its ack is handed over, so the store's next pull (and every edge's) carries the merge. The
        periodic job catches what this misses (a failure here, or two stores' batches committing
        the same card at the same instant on PostgreSQL, each not seeing the other's)."""
        try:
            await self.storage.merge_duplicates(self.clock(), brand_id=brand_id, customer_ids=customer_ids,
                                                actor=f"batch {store_id}/{seq}")
        except StoreError as exc:
            log.warning("store %s batch %d: merging duplicate profiles failed, the periodic job will: %s",
                        store_id, seq, exc)

    def _take(self, claims: list[Claim], ahead: dict[tuple[str, int, bytes], Batch]) -> tuple[list[Claim],
                                                                                             list[Batch]]:
        """The claims a step applies, decoded: in order, until they hold ``STEP_OPS`` ops (the rest
        stay in the inbox for the next step)."""
        batches: list[Batch] = []
        ops = 0
        for claim in claims:
            if ops >= STEP_OPS:
                break
            batch = ahead.get(_key(claim)) or self._batch(claim)
            batches.append(batch)
            ops += len(batch.ops)
        return claims[:len(batches)], batches

    def _batch(self, claim: Claim) -> Batch:
        known = None if self.decoded is None else self.decoded(*_key(claim))
        return _decode(claim) if known is None else known

    def stop(self) -> None:
        """Finish the batch in hand, then return from ``run`` or ``drain``."""
        self._stop.set()
        self._wake.set()


def _decode(claim: Claim) -> Batch:
    try:
        return decode_batch(claim.body)
    except ProtocolError as exc:  # it decoded when received: a bug or a tampered database
        raise StoreError(f"inbox batch {claim.seq} of store {claim.head.store_id} no longer decodes: {exc}") from exc


def _key(claim: Claim) -> tuple[str, int, bytes]:
    return claim.head.store_id, claim.seq, claim.hash
