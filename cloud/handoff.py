"""From receiving a batch to answering its ack, inside one cloud process.

A batch POST stores the batch in the inbox, wakes this process's embedded
reconciler (``work``) and waits, for a bounded time, for the batch's ack.
Whoever applies it answers the waiters: the embedded worker tells the
handoff at once (``applied``); a worker in another process is noticed by
polling the ledger, one query for every waiting batch, only while some
request waits. The embedded worker also takes the batch as the POST decoded
it (``decoded``), instead of decoding the stored bytes a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict

from protocol import Batch

from .errors import StoreError
from .storage import Storage

log = logging.getLogger(__name__)

#: How often waiting requests look for acks that another process's worker wrote.
POLL_INTERVAL = 0.025
#: Decoded batches kept for the embedded worker (older ones are decoded again from the inbox).
KEEP_DECODED = 16

Key = tuple[str, int]  # (store_id, seq)


class Handoff:
    def __init__(self, storage: Storage, *, poll_interval: float = POLL_INTERVAL) -> None:
        self.storage = storage
        self.poll_interval = poll_interval
        self.work = asyncio.Event()  # set when a batch was queued: wakes the embedded worker
        self._acks: dict[Key, asyncio.Future[bytes]] = {}
        self._waiting: dict[Key, int] = {}
        self._poller: asyncio.Task[None] | None = None
        self._decoded: OrderedDict[tuple[str, int, bytes], Batch] = OrderedDict()

    def queued(self, batch: Batch, digest: bytes) -> None:
        """A verified batch is in the inbox: keep it decoded and wake the embedded worker."""
        self._decoded[batch.store_id, batch.seq, digest] = batch
        while len(self._decoded) > KEEP_DECODED:
            self._decoded.popitem(last=False)
        self.work.set()

    def decoded(self, store_id: str, seq: int, digest: bytes) -> Batch | None:
        """The batch as received by this process, if it still has it (once)."""
        return self._decoded.pop((store_id, seq, digest), None)

    def applied(self, store_id: str, seq: int, ack: bytes) -> None:
        """A batch's ack is committed: answer whoever waits for it."""
        future = self._acks.get((store_id, seq))
        if future is not None and not future.done():
            future.set_result(ack)

    async def wait_for_ack(self, store_id: str, seq: int, seconds: float) -> bytes | None:
        """The batch's sealed ack once it is applied, or None after ``seconds``."""
        if seconds <= 0:
            return None
        key = (store_id, seq)
        future = self._acks.get(key)
        if future is None:
            future = self._acks[key] = asyncio.get_running_loop().create_future()
        self._waiting[key] = self._waiting.get(key, 0) + 1
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="ack-poller")
        try:
            return await asyncio.wait_for(asyncio.shield(future), seconds)
        except TimeoutError:
            return None
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key]
                del self._acks[key]

    async def _poll(self) -> None:
        while self._waiting:
            await asyncio.sleep(self.poll_interval)
            wanted = [key for key, future in self._acks.items() if not future.done()]
            try:
                found = await self.storage.applied_acks(wanted)
            except StoreError as exc:  # the waiters time out and answer 202; the edge resends
                log.warning("cannot look for applied batches: %s", exc)
                continue
            for (store_id, seq), ack in found.items():
                self.applied(store_id, seq, ack)

    async def close(self) -> None:
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
