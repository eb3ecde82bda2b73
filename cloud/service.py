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
4. batches: the store's sequence and hash chain (409s); pulls: freshness.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from protocol import (
    Ack,
    Batch,
    CustomerRecord,
    Downlink,
    MessageType,
    Op,
    OpStatus,
    ProtocolError,
    Pull,
    body_hash,
    decode_batch,
    decode_pull,
    encode_ack,
    encode_downlink,
    load_public_key,
    open_envelope,
    seal,
)
from protocol.refunds import basis_version

from .cloud_keyring import KeyChain, reseal
from .errors import HttpError, StoreError
from .keys import CloudKey
from .messages import batch_effects, needs_program
from .model import BatchCommit, CustomerState, KeyRecord, LedgerState
from .reconciler import reconcile
from .storage import Storage
from .store_keys_model import check_key_usable

log = logging.getLogger(__name__)

#: A pull older or newer than this (against the cloud clock) is refused.
MAX_PULL_SKEW_MS = 300_000


def _protocol_error(exc: ProtocolError) -> HttpError:
    return HttpError(exc.status_hint, exc.code, exc.message, field=exc.field)


@dataclass(frozen=True, slots=True)
class Verified:
    key: KeyRecord
    body: bytes


class SyncService:
    def __init__(self, storage: Storage, cloud_key: CloudKey, clock: Callable[[], int]) -> None:
        self.storage = storage
        self.cloud_key = cloud_key
        self.clock = clock
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
        """The sealed ack envelope for a batch envelope, applying it at most once."""
        verified = await self.verify(data, MessageType.BATCH)
        try:
            batch = decode_batch(verified.body)
        except ProtocolError as exc:
            raise _protocol_error(exc) from exc
        self._check_origin(verified.key, batch.store_id, batch.key_id)
        return await self._apply(batch, verified.body)

    async def _apply(self, batch: Batch, body: bytes) -> bytes:
        digest = body_hash(body)
        async with self.storage.batch_tx() as tx:
            head = await tx.chain_head(batch.store_id)
            if head is None:
                raise StoreError(f"store {batch.store_id} has a key but no row")
            last = head.last_seq
            if batch.seq <= last:
                stored = await tx.stored_batch(batch.store_id, batch.seq)
                if stored is not None and stored.hash == digest:
                    log.info("store %s resent batch %d; answering the stored ack", batch.store_id, batch.seq)
                    # sealed again if an older cloud key sealed it: edges drop old keys after a rotation
                    return reseal(stored.ack, MessageType.ACK, self.cloud_key)
                raise HttpError(
                    409,
                    "batch_conflict",
                    f"batch {batch.seq} of store {batch.store_id} was already applied with other content",
                    field="seq",
                )
            if batch.seq > last + 1:
                raise HttpError(
                    409,
                    "sequence_gap",
                    f"expected batch {last + 1}, got {batch.seq}",
                    field="seq",
                    extra={"expected": last + 1},
                )
            if batch.prev_hash != head.last_hash:
                raise HttpError(
                    409, "chain_broken", f"prev_hash does not match batch {last}", field="prev_hash"
                )
            ops = batch.ops
            state = await tx.load_state(
                brand_id=head.brand_id,
                store_id=batch.store_id,
                op_ids=[op.op_id for op in ops],
                customer_ids=[op.customer_id for op in ops],
                sale_ids=[sid for op in ops if isinstance(sid := getattr(op, "sale_id", None), str)],
            )
            programs = await tx.load_programs(head.brand_id, sorted(_versions(ops, state)))
            now = self.clock()
            outcome = reconcile(
                store_id=batch.store_id, brand_id=head.brand_id, seq=batch.seq, ops=ops, state=state, now=now,
                programs=programs,
            )
            ack = Ack(batch.store_id, batch.seq, digest, now, outcome.results, outcome.balances)
            sealed = seal(MessageType.ACK, encode_ack(ack), self.cloud_key.private, self.cloud_key.key_id)
            current = state.program_version
            program = programs.get(current) if current is not None and needs_program(outcome) else None
            effects = batch_effects(outcome, program)
            await tx.save_batch(
                BatchCommit(
                    store_id=batch.store_id,
                    seq=batch.seq,
                    prev_seq=last,
                    hash=digest,
                    body=body,
                    ack=sealed,
                    at=batch.at,
                    received_at=now,
                    outcome=outcome,
                    messages=effects.messages,
                    consents=effects.consents,
                )
            )
        log.info(
            "store %s batch %d: %d ops, %d refused, %d applied with a note (see ops.note), %d mismatches,"
            " %d shortfalls",
            batch.store_id,
            batch.seq,
            len(ops),
            sum(1 for r in outcome.results if r.status is OpStatus.REFUSED),
            sum(1 for r in outcome.ops if r.note is not None),
            len(outcome.mismatches),
            len(outcome.shortfalls),
        )
        return sealed

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
        downlink = await self._downlink(pull, verified.key.brand_id, now)
        return seal(
            MessageType.DOWNLINK, encode_downlink(downlink), self.cloud_key.private, self.cloud_key.key_id
        )

    async def _downlink(self, pull: Pull, brand_id: str, now: int) -> Downlink:
        page = await self.storage.downlink_page(brand_id, pull.cursor, pull.limit)
        customers = tuple(_record(c, page.expiring.get(c.customer_id, ())) for c in page.customers)
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


def _versions(ops: tuple[Op, ...], state: LedgerState) -> set[int]:
    """The program versions a batch needs: those its ops name, its sales' earns were rated with, the current."""
    versions = {v for op in ops if isinstance(v := getattr(op, "program_version", None), int)}
    versions.update(basis_version(s.basis) for s in state.sales.values() if s.basis is not None)
    if state.program_version is not None:
        versions.add(state.program_version)
    return versions


def _record(c: CustomerState, expiring: tuple[tuple[int, int], ...]) -> CustomerRecord:
    groups = tuple(json.loads(c.groups))
    return CustomerRecord(c.customer_id, c.name, c.phone, c.email, c.card_code, c.balance, c.version, groups,
                          c.opted_out, expiring)
