"""Enrollment by claim token, store key rotation, and whether a store key may sign at all.

Request bytes -> checked message -> one storage transaction -> sealed answer,
as in ``service``; nothing is written on any refusal. A claim is checked
with the key it carries (it proves the edge holds the private key, which
never leaves the store) and spends its one-time token; a rotation is
signed by the store's current key and proven by the next one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from protocol import MessageType, ProtocolError, public_bytes, seal
from protocol.key_messages import (
    Enrollment,
    StoreKeyRotated,
    decode_store_key_rotation,
    encode_key_chain,
    encode_store_key_rotated,
    open_claim,
    seal_enrollment,
)

from .cloud_keyring import KeyChain
from .errors import HttpError
from .keys import CloudKey
from .service import MAX_PULL_SKEW_MS, SyncService
from .storage import Storage
from .store_keys_model import STORE_KEY_OVERLAP_MS, KeyRefused, hash_claim_token, when

log = logging.getLogger(__name__)


def _refused(exc: KeyRefused) -> HttpError:
    return HttpError(exc.status, exc.code, exc.message, field=exc.field)


def _protocol_error(exc: ProtocolError) -> HttpError:
    return HttpError(exc.status_hint, exc.code, exc.message, field=exc.field)


def _check_fresh(at: int, now: int, what: str) -> None:
    if abs(at - now) > MAX_PULL_SKEW_MS:
        raise HttpError(401, "stale_request", f"{what} made at {at} is more than {MAX_PULL_SKEW_MS // 1000} s from"
                        f" the cloud clock {now}", field="at")


class EnrollmentService:
    """The answers to claims, store key rotations and requests for the cloud key chain."""

    def __init__(
        self, sync: SyncService, *, clock: Callable[[], int] | None = None,
        store_key_overlap_ms: int = STORE_KEY_OVERLAP_MS,
    ) -> None:
        self.sync = sync
        self.clock = clock or sync.clock
        self.store_key_overlap_ms = store_key_overlap_ms

    @property
    def storage(self) -> Storage:
        return self.sync.storage

    @property
    def cloud_key(self) -> CloudKey:
        return self.sync.cloud_key

    @property
    def key_chain(self) -> KeyChain:
        return self.sync.key_chain

    async def claim(self, data: bytes) -> bytes:
        """The sealed enrollment answering a claim envelope; the token is spent once."""
        try:
            claim = open_claim(data)
        except ProtocolError as exc:
            raise _protocol_error(exc) from exc
        now = self.clock()
        _check_fresh(claim.at, now, "the claim")
        try:
            claimed = await self.storage.claim_store(hash_claim_token(claim.token), claim.public_key, now)
        except KeyRefused as exc:
            raise _refused(exc) from exc
        version = await self.key_chain.version_of(self.cloud_key.key_id)
        if version is None:  # the app registers its key at start-up; a ledger changed under it
            self.key_chain.forget()
            version = await self.key_chain.version_of(self.cloud_key.key_id) or 1
        if claimed.replayed:
            log.info("store %s claimed again by key %s; answering again", claimed.store_id, claimed.key_id)
        else:
            log.info("store %s (%s) enrolled key %s", claimed.store_id, claimed.brand_id, claimed.key_id)
        enrollment = Enrollment(claimed.store_id, claimed.brand_id, claimed.key_id, claim.nonce, now, version,
                                self.cloud_key.key_id, public_bytes(self.cloud_key.public))
        return seal_enrollment(enrollment, self.cloud_key.private)

    async def rotate_store_key(self, data: bytes) -> bytes:
        """The sealed answer to a store key rotation signed by the store's current key."""
        verified = await self.sync.verify(data, MessageType.STORE_KEY)
        try:
            rotation = decode_store_key_rotation(verified.body)
        except ProtocolError as exc:
            raise _protocol_error(exc) from exc
        key = verified.key
        if rotation.old_key_id != key.key_id or rotation.store_id != key.store_id:
            raise HttpError(403, "foreign_key", f"key {key.key_id} signs for store {key.store_id!r} only",
                            field="store_id" if rotation.old_key_id == key.key_id else "old_key_id")
        now = self.clock()
        _check_fresh(rotation.at, now, "the rotation")
        try:
            rotated = await self.storage.rotate_store_key(
                rotation.store_id, rotation.old_key_id, rotation.public_key, now + self.store_key_overlap_ms, now)
        except KeyRefused as exc:
            raise _refused(exc) from exc
        log.info("store %s key %s -> %s; the old key works until %s%s", rotated.store_id, rotated.old_key_id,
                 rotated.key_id, when(rotated.old_key_expires_at), " (again)" if rotated.replayed else "")
        answer = StoreKeyRotated(rotated.store_id, rotated.old_key_id, rotated.key_id, rotated.old_key_expires_at,
                                 rotation.nonce, now)
        return seal(MessageType.STORE_KEY_ACK, encode_store_key_rotated(answer), self.cloud_key.private,
                    self.cloud_key.key_id)

    async def key_chain_after(self, key_id: str | None) -> bytes:
        """The announcements after ``key_id`` (every one when None or unknown), as one msgpack array."""
        return encode_key_chain(await self.key_chain.after(key_id))

