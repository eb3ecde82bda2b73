"""Sync with the edges: signed batches in, signed acks and downlinks out.

Request bytes -> verified, decoded message -> storage transaction -> sealed
answer. The pure ledger decisions live in ``reconciler``; this module does the
checks around them, in this order (nothing is written on any refusal):

1. the envelope parses and has the expected type;
2. its key id names a registered key (401 ``unknown_key``), the signature
   holds (401 ``bad_signature``), and the key may sign (403
   ``store_revoked``, ``key_revoked``, or ``key_expired`` once the overlap
   window after its rotation is over);
3. the body decodes, and names that key and the key's own store
   (403 ``foreign_key``);
4. batches: the store's sequence and hash chain as received (409s); pulls:
   freshness.

A batch that passes is stored in the inbox and applied by a reconciler
(``worker``); its POST waits a bounded time for the ack (``handoff``), else
answers 202 ``accepted`` and the edge sends the same bytes again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from protocol import (
    Batch,
    CustomerRecord,
    Downlink,
    MessageType,
    ProtocolError,
    Pull,
    body_hash,
    decode_batch,
    decode_pull,
    encode_downlink,
    load_public_key,
    open_envelope,
    seal,
)

from .cloud_keyring import KeyChain, reseal
from .erasure import is_erased
from .errors import HttpError, NotYetApplied
from .handoff import Handoff
from .keys import CloudKey
from .model import CustomerState, InboxBatch, KeyRecord, Receipt
from .storage import Storage
from .store_keys_model import check_key_usable

log = logging.getLogger(__name__)

#: A pull older or newer than this (against the cloud clock) is refused.
MAX_PULL_SKEW_MS = 300_000
#: How long a batch POST waits for its batch to be applied before answering 202.
ACK_WAIT = 2.0
#: When the edge should send a batch answered 202 again.
RETRY_AFTER_MS = 250


def _protocol_error(exc: ProtocolError) -> HttpError:
    return HttpError(exc.status_hint, exc.code, exc.message, field=exc.field)


@dataclass(frozen=True, slots=True)
class Verified:
    key: KeyRecord
    body: bytes


class SyncService:
    def __init__(
        self,
        storage: Storage,
        cloud_key: CloudKey,
        clock: Callable[[], int],
        *,
        handoff: Handoff | None = None,
        ack_wait: float = ACK_WAIT,
    ) -> None:
        self.storage = storage
        self.cloud_key = cloud_key
        self.clock = clock
        self.handoff = handoff or Handoff(storage)
        self.ack_wait = ack_wait
        self.key_chain = KeyChain(storage, clock)

    async def verify(self, data: bytes, expected: MessageType) -> Verified:
        """Steps 1-2: the signed body, and the registered key that signed it."""
        try:
            env = open_envelope(data, expected)
        except ProtocolError as exc:
            raise _protocol_error(exc) from exc
        key = await self.storage.find_key(env.key_id)
        if key is None:
            raise HttpError(401, "unknown_key", f"no store key {env.key_id!r} is registered", field="key_id")
        try:
            body = env.verify(load_public_key(key.public_key))
        except ProtocolError as exc:
            raise _protocol_error(exc) from exc
        check_key_usable(key, self.clock())  # after the signature: a revocation's reason is for its store only
        return Verified(key, body)

    @staticmethod
    def _check_origin(key: KeyRecord, store_id: str, key_id: str) -> None:
        if key_id != key.key_id or store_id != key.store_id:
            raise HttpError(
                403,
                "foreign_key",
                f"key {key.key_id} signs for store {key.store_id!r} only",
                field="store_id" if key_id == key.key_id else "key_id",
            )

    # ---- batches

    async def submit_batch(self, data: bytes) -> bytes:
        """The sealed ack for a batch envelope, once its batch is applied (at most once).

        A new batch is stored in the inbox and answered when a reconciler has
        applied it, if that happens within ``ack_wait`` seconds; otherwise
        ``NotYetApplied`` (202): the edge sends the same bytes again soon.
        """
        verified = await self.verify(data, MessageType.BATCH)
        try:
            batch = decode_batch(verified.body)
        except ProtocolError as exc:
            raise _protocol_error(exc) from exc
        self._check_origin(verified.key, batch.store_id, batch.key_id)
        return await self._receive(batch, verified.body)

    async def _receive(self, batch: Batch, body: bytes) -> bytes:
        digest = body_hash(body)
        received = await self.storage.receive_batch(
            InboxBatch(batch.store_id, batch.seq, digest, batch.prev_hash, body, batch.at, self.clock())
        )
        match received.receipt:
            case Receipt.APPLIED:
                assert received.ack is not None
                log.info("store %s resent batch %d; answering the stored ack", batch.store_id, batch.seq)
                self.answered(batch.store_id, "replayed")
                # sealed again if an older cloud key sealed it: edges drop old keys after a rotation
                return reseal(received.ack, MessageType.ACK, self.cloud_key)
            case Receipt.CONFLICT:
                raise HttpError(
                    409,
                    "batch_conflict",
                    f"batch {batch.seq} of store {batch.store_id} was already received with other content",
                    field="seq",
                )
            case Receipt.GAP:
                raise HttpError(
                    409,
                    "sequence_gap",
                    f"expected batch {received.expected}, got {batch.seq}",
                    field="seq",
                    extra={"expected": received.expected},
                )
            case Receipt.CHAIN_BROKEN:
                raise HttpError(
                    409, "chain_broken", f"prev_hash does not match batch {batch.seq - 1}", field="prev_hash"
                )
        self.handoff.queued(batch, digest)
        ack = await self.handoff.wait_for_ack(batch.store_id, batch.seq, self.ack_wait)
        if ack is None:
            self.answered(batch.store_id, "pending")
            raise NotYetApplied(batch.store_id, batch.seq, RETRY_AFTER_MS)
        return reseal(ack, MessageType.ACK, self.cloud_key)  # a reconciler elsewhere may run an older key

    def answered(self, store_id: str, how: str) -> None:
        """A batch answered without being applied now: ``replayed`` (its stored ack) or ``pending`` (202)."""

    # ---- pulls

    async def pull(self, data: bytes) -> bytes:
        """The sealed downlink answering a pull envelope."""
        verified = await self.verify(data, MessageType.PULL)
        try:
            pull = decode_pull(verified.body)
        except ProtocolError as exc:
            raise _protocol_error(exc) from exc
        self._check_origin(verified.key, pull.store_id, pull.key_id)
        now = self.clock()
        if abs(pull.at - now) > MAX_PULL_SKEW_MS:
            raise HttpError(
                401,
                "stale_request",
                f"pull made at {pull.at} is more than {MAX_PULL_SKEW_MS // 1000} s from the cloud clock {now}",
                field="at",
            )
        await self.storage.note_pull(pull.store_id, now)
        downlink = await self._downlink(pull, verified.key.brand_id, now)
        return seal(
            MessageType.DOWNLINK, encode_downlink(downlink), self.cloud_key.private, self.cloud_key.key_id
        )

    async def _downlink(self, pull: Pull, brand_id: str, now: int) -> Downlink:
        page = await self.storage.downlink_page(brand_id, pull.cursor, pull.limit)
        customers = tuple(_record(c, page.expiring.get(c.customer_id, ()), page.card_tokens.get(c.customer_id),
                                  page.merged.get(c.customer_id))
                          for c in page.customers)
        more = len(customers) == pull.limit
        if more:
            to_cursor = customers[-1].version
        else:
            if page.counter < pull.cursor:
                log.warning(
                    "store %s pulls from cursor %d beyond the change counter %d (restored database?)",
                    pull.store_id,
                    pull.cursor,
                    page.counter,
                )
            to_cursor = max(pull.cursor, page.counter)
        return Downlink(
            store_id=pull.store_id,
            nonce=pull.nonce,
            from_cursor=pull.cursor,
            to_cursor=to_cursor,
            more=more,
            at=now,
            customers=customers,
            program=page.program,
            cloud_keys=await self.key_chain.after(pull.cloud_key_id),
        )


def _record(c: CustomerState, expiring: tuple[tuple[int, int], ...], card_token: str | None,
            merged_into: str | None) -> CustomerRecord:
    groups = tuple(json.loads(c.groups))
    return CustomerRecord(c.customer_id, c.name, c.phone, c.email, c.card_code, c.balance, c.version, groups,
                          c.opted_out, expiring, merged_into, card_token, erased=is_erased(c.consent))
