"""Records and refusals of store enrollment, key rotation and cloud key versions.

Plain values shared by the storage mixin (``store_keys_store``), the HTTP
side (``enrollment_api``) and the CLI. Times are integer milliseconds.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from .errors import CloudError, HttpError
from .model import KeyRecord

#: A claim token is good for three days: long enough to ship a box to a store.
CLAIM_TOKEN_TTL_MS = 72 * 3600 * 1000
#: After a store key rotation the old key still works this long (batches cut
#: before the rotation, resent byte for byte by an edge that was offline).
STORE_KEY_OVERLAP_MS = 7 * 24 * 3600 * 1000
#: After a cloud key rotation, once an edge has seen the new key in use, the
#: keys before it still verify this long there (acks sealed before, processes
#: not yet restarted).
CLOUD_KEY_OVERLAP_MS = 7 * 24 * 3600 * 1000
CLAIM_TOKEN_PREFIX = "lck_"


def new_claim_token() -> str:
    """A random one-time token (256 bits), shown once to the operator."""
    return CLAIM_TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_claim_token(token: str) -> bytes:
    """What the ledger keeps of a token: a random 256-bit token needs no slow hash."""
    return hashlib.sha256(token.encode()).digest()


class KeyRefused(CloudError):
    """A claim or a key change refused for a reason the requester must hear (4xx)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


@dataclass(frozen=True, slots=True)
class ClaimedStore:
    """A claim that registered ``key_id`` for the store (``replayed``: it already had)."""

    store_id: str
    brand_id: str
    key_id: str
    replayed: bool


@dataclass(frozen=True, slots=True)
class RotatedKey:
    """A store key rotation as the ledger holds it (``replayed``: it already did)."""

    store_id: str
    old_key_id: str
    key_id: str
    old_key_expires_at: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class ClaimTokenRecord:
    store_id: str
    created_at: int
    expires_at: int
    used_at: int | None
    key_id: str | None


@dataclass(frozen=True, slots=True)
class CloudKeyRecord:
    """A version of the cloud's signing key: version 1 has no announcement, every later
    one the CLOUD_KEY envelope signed by the version before it."""

    version: int
    key_id: str
    public_key: bytes
    announcement: bytes | None
    overlap_ms: int
    created_at: int


def key_state(expires_at: int | None, revoked_at: int | None, replaced_by: str | None, now: int) -> str:
    """A store key in words: active, retiring (in its overlap window), expired or revoked."""
    if revoked_at is not None:
        return "revoked"
    if expires_at is not None and now >= expires_at:
        return "expired"
    if replaced_by is not None or expires_at is not None:
        return "retiring"
    return "active"


def when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


def check_key_usable(key: KeyRecord, now: int) -> None:
    """HttpError 403 unless the key may sign now: its store not revoked, the key neither revoked
    nor past the overlap window that followed its rotation."""
    if key.store_revoked_at is not None:
        raise HttpError(403, "store_revoked", f"store {key.store_id} was revoked: {key.store_revoke_reason}",
                        field="store_id", extra={"reason": key.store_revoke_reason})
    if key.revoked_at is not None:
        raise HttpError(403, "key_revoked", f"key {key.key_id} was revoked", field="key_id")
    if key.expires_at is not None and now >= key.expires_at:
        raise HttpError(403, "key_expired", f"key {key.key_id} was replaced by {key.replaced_by}; it stopped working"
                        f" at {when(key.expires_at)}", field="key_id")
