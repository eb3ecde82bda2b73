"""The sync task: push the outbox in signed batches, pull confirmed state.

While the cloud is reachable it drains the outbox batch by batch; while it
is not, it retries with jittered exponential backoff. A batch that has no
ack yet is resent as the identical bytes stored when it was cut, so the
cloud's sequence and hash chain see one batch however often it travels.

Acks and downlinks are checked with the cloud keys the node trusts
(``cloud_trust``): the pinned key and the successors announced on
downlinks. A refusal that only a person can lift (the store revoked, its
key refused) is kept in words for the verdict. A new key file (``loyalty-edge
rotate-key``) is picked up at the next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol import (
    MessageType,
    ProtocolError,
    Pull,
    RemoteProtocolError,
    decode_ack,
    decode_downlink,
    encode_pull,
    key_id_for,
    public_bytes,
    seal,
)

from .backoff import Backoff
from .cloud_trust import CloudTrust, TrustKeeper, pin
from .db import connect
from .erasure import checkpoint
from .errors import CloudPending, CloudRefused, CloudUnavailable, StoreError
from .keyfile import KeyFileError, load_key
from .outbox import Identity, NewBatch, PendingBatch, apply_ack, apply_downlink, prepare_batch, store_batch
from .store import EdgeStore

log = logging.getLogger(__name__)
PULL_LIMIT = 2000


class CloudTransport(Protocol):
    """What the sync task needs from the network (edge.cloud_client.CloudClient)."""

    async def post_envelope(self, path: str, envelope: bytes) -> bytes: ...

    async def get_bytes(self, path: str) -> bytes: ...


@dataclass
class SyncStatus:
    reachable: bool | None = None
    last_success_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    next_retry_at: float | None = None
    attempt: int = 0
    batches_acked: int = 0
    ops_acked: int = 0
    ops_refused: int = 0
    clock_skew_ms: int | None = None
    batches_pending: int = 0  # answered 202 (stored by the cloud, not applied yet) and sent again
    errors: dict[str, int] = field(default_factory=dict)  # failed rounds by error class, for metrics
    #: A refusal only a person can lift (store revoked, key refused, cloud key not trusted), in words.
    refused: str | None = None
    cloud_key_id: str | None = None  # the newest cloud key this node trusts, and its version
    cloud_key_version: int | None = None


def needs_a_person(exc: Exception) -> str | None:
    """The words for a refusal that retrying will not cure, else None."""
    if isinstance(exc, CloudRefused):
        if exc.code == "store_revoked":
            return f"the cloud revoked this store: {exc.extra.get('reason') or exc.message}"
        if exc.code == "key_expired":
            return (f"the cloud no longer accepts this node's old key: {exc.message}; restart the edge so it signs"
                    " with the key loyalty-edge rotate-key made")
        if exc.code in ("key_revoked", "unknown_key", "foreign_key"):
            return f"the cloud refuses this node's key ({exc.code}): {exc.message}"
    if isinstance(exc, RemoteProtocolError) and exc.code in ("unknown_cloud_key", "retired_cloud_key"):
        return f"this node cannot trust the cloud's answers: {exc.message}"
    return None


class SyncTask:
    def __init__(
        self,
        store: EdgeStore,
        client: CloudTransport,
        identity: Identity,
        cloud_key: Ed25519PublicKey,
        *,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        backoff: Backoff | None = None,
        batch_size: int = 1000,
        interval: float = 5.0,
        linger: float = 0.05,
        key_path: Path | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.identity = identity
        self.cloud_key = cloud_key  # the pinned one; the keeper trusts its successors too
        self.keeper: TrustKeeper | None = None
        self.key_path = key_path
        self._key_stamp = self._stamp()
        self.clock = clock
        self.rand = rand
        self.backoff = backoff or Backoff()
        self.batch_size = batch_size
        self.interval = interval
        self.linger = linger
        self.status = SyncStatus()
        self._wake = asyncio.Event()

    def notify(self) -> None:
        """New ops are in the outbox: sync soon instead of at the next interval."""
        self._wake.set()

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def run(self) -> None:
        while True:
            delay = await self.attempt_once()
            if self.status.attempt:
                # Backing off: new writes must not hammer a cloud that is away.
                await asyncio.sleep(delay)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
                if self._wake.is_set():
                    # Let a burst of writes gather into one batch.
                    await asyncio.sleep(self.linger)
            self._wake.clear()

    async def attempt_once(self) -> float:
        """One sync round; returns the seconds to wait before the next."""
        try:
            await self.sync_once()
        except CloudPending as exc:
            # The cloud has the batch: no failure, no backoff; the same bytes go again soon.
            self.status.batches_pending += 1
            self.status.reachable = True
            log.info("%s; sending it again in %.2f s", exc, exc.retry_after)
            return exc.retry_after
        except (CloudUnavailable, CloudRefused, ProtocolError, StoreError) as exc:
            status = self.status
            status.attempt += 1
            status.reachable = not isinstance(exc, CloudUnavailable)
            status.last_error = f"{type(exc).__name__}: {exc}"
            status.last_error_at = self.clock()
            status.errors[type(exc).__name__] = status.errors.get(type(exc).__name__, 0) + 1
            status.refused = needs_a_person(exc)
            delay = self.backoff.delay(status.attempt, self.rand)
            status.next_retry_at = self.clock() + delay
            log.warning("sync failed (attempt %d, retry in %.1fs): %s", status.attempt, delay, status.last_error)
            return delay
        self.status.attempt = 0
        self.status.refused = None
        self.status.next_retry_at = self.clock() + self.interval
        return self.interval

    async def sync_once(self) -> None:
        self._reload_key()
        await self.push()
        await self.pull()
        self.status.reachable = True
        self.status.last_success_at = self.clock()

    async def trust(self) -> TrustKeeper:
        """The keeper of the trusted cloud keys, loaded (and the pinned key recorded) on first use."""
        if self.keeper is None:
            keys = await self.store.write(pin(public_bytes(self.cloud_key), 0, self._now_ms()))
            self.keeper = TrustKeeper(CloudTrust(keys), self._fetch_chain, self.store.write, self._now_ms)
        newest = self.keeper.trust.newest
        self.status.cloud_key_id, self.status.cloud_key_version = newest.key_id, newest.version or None
        return self.keeper

    async def _fetch_chain(self, after: str) -> bytes:
        return await self.client.get_bytes(f"/v1/cloud-keys?after={quote(after, safe='')}")

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.key_path.stat() if self.key_path is not None else None
        except OSError:
            return None
        return None if st is None else (st.st_ino, st.st_mtime_ns, st.st_size)

    def _reload_key(self) -> None:
        """Sign with the key file's new key once it changed on disk (after ``rotate-key``)."""
        stamp = self._stamp()
        if self.key_path is None or stamp is None or stamp == self._key_stamp:
            return
        self._key_stamp = stamp
        try:
            key = load_key(self.key_path)
        except KeyFileError as exc:
            log.error("the key file changed but cannot be read; still signing with %s: %s", self.identity.key_id, exc)
            return
        key_id = key_id_for(key.public_key())
        if key_id != self.identity.key_id:
            log.info("the key file holds a new key: signing with %s from now on (was %s)", key_id,
                     self.identity.key_id)
            self.identity = dataclasses.replace(self.identity, key_id=key_id, private_key=key)

    async def push(self) -> int:
        """Send batches until the outbox is drained; return how many were acked."""
        sent = 0
        while True:
            pending = await self._next_batch()
            if pending is None:
                return sent
            reply = await self.client.post_envelope("/v1/batches", pending.envelope)
            ack = decode_ack(await (await self.trust()).open(reply, MessageType.ACK))
            if (
                ack.store_id != self.identity.store_id
                or ack.seq != pending.seq
                or ack.batch_hash != pending.hash
                or len(ack.results) != pending.op_count
            ):
                raise RemoteProtocolError("the ack does not answer the batch we sent", code="wrong_ack")
            self.status.clock_skew_ms = ack.at - self._now_ms()
            counts = await self.store.write(apply_ack(ack, self._now_ms()))
            self.status.batches_acked += 1
            self.status.ops_acked += counts["applied"]
            self.status.ops_refused += counts["refused"]
            sent += 1
            if counts["refused"]:
                log.warning("batch %d: the cloud refused %d ops", ack.seq, counts["refused"])

    async def _next_batch(self) -> PendingBatch | None:
        """The batch to send: prepared on a worker thread, stored by the writer."""
        loop = asyncio.get_running_loop()
        while True:
            now = self._now_ms()
            prepared = await loop.run_in_executor(None, self._prepare, now)
            if prepared is None or isinstance(prepared, PendingBatch):
                return prepared
            if await self.store.write(store_batch(prepared, now)):
                return prepared.batch

    def _prepare(self, now: int) -> PendingBatch | NewBatch | None:
        conn = connect(self.store.path, readonly=True)
        try:
            return prepare_batch(conn, self.identity, now, self.batch_size)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the outbox: {exc}") from exc
        finally:
            conn.close()

    async def pull(self) -> None:
        """Fetch changes since our cursor until the cloud has no more."""
        keeper = await self.trust()
        while True:
            cursor = self.store.meta("cursor", 0)
            nonce = os.urandom(16)
            request = Pull(
                store_id=self.identity.store_id,
                key_id=self.identity.key_id,
                cursor=cursor,
                nonce=nonce,
                at=self._now_ms(),
                limit=PULL_LIMIT,
                cloud_key_id=keeper.trust.newest.key_id,
            )
            envelope = seal(MessageType.PULL, encode_pull(request), self.identity.private_key, self.identity.key_id)
            reply = await self.client.post_envelope("/v1/pull", envelope)
            downlink = decode_downlink(await keeper.open(reply, MessageType.DOWNLINK))
            if downlink.nonce != nonce or downlink.store_id != self.identity.store_id:
                raise RemoteProtocolError("the downlink does not answer our pull", code="wrong_downlink")
            if await keeper.adopt(downlink.cloud_keys):
                await self.trust()  # shows the new newest key in the status
            applied = await self.store.write(apply_downlink(downlink, self._now_ms()))
            if applied and any(c.erased for c in downlink.customers):
                await asyncio.to_thread(checkpoint, self.store.path)
            if downlink.program is not None:
                self.store.forget_program()
            if not applied or not downlink.more:
                return
