"""Storage of enrollment, store key rotation, revocation and cloud key versions.

A mixin of ``SQLiteStorage`` and ``PgStorage`` written once on
``sql.Session``, like ``ledger.SqlLedger``. Each method is one write
transaction that checks everything before it writes a row; the rows it
decides on are locked (``FOR UPDATE`` on PostgreSQL, the single writer on
SQLite), so two claims of one token, or two rotations of one key, cannot
both win.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

from . import checks
from .errors import AlreadyExists, ConfigError, NotFound
from .ledger import KEY_SELECT, insert_store
from .model import KeyRecord, StoreRecord, key_from_row
from .sql import Row, Session, one
from .store_keys_model import (
    ClaimedStore,
    ClaimTokenRecord,
    CloudKeyRecord,
    KeyRefused,
    RotatedKey,
)

_CLOUD_KEY_COLUMNS = "version, key_id, public_key, announcement, overlap_ms, created_at"
_STORE_COLUMNS = "store_id, brand_id, last_seq, last_hash, created_at, revoked_at, revoke_reason"


def _cloud_key(row: Row) -> CloudKeyRecord:
    return CloudKeyRecord(row[0], row[1], bytes(row[2]), None if row[3] is None else bytes(row[3]), row[4], row[5])


def _store(row: Row, key_ids: tuple[str, ...] = ()) -> StoreRecord:
    return StoreRecord(row[0], row[1], row[2], bytes(row[3]), row[4], key_ids, row[5], row[6])


def _revoked(store_id: str, reason: str | None) -> KeyRefused:
    return KeyRefused(403, "store_revoked", f"store {store_id} was revoked: {reason}", "store_id")


class SqlStoreKeys:
    """Enrollment, key rotation and revocation; mixed into both backends."""

    def _read(self) -> AbstractAsyncContextManager[Session]:
        raise NotImplementedError

    def _write(self) -> AbstractAsyncContextManager[Session]:
        raise NotImplementedError

    # ---- enrollment by claim token

    async def add_store_to_claim(
        self, store_id: str, brand_id: str, token_hash: bytes, expires_at: int, now: int
    ) -> StoreRecord:
        """A store with no key yet, and the one-time token its edge claims it with."""
        checks.check_id("store_id", store_id)
        async with self._write() as q:
            if not await q.fetch("SELECT 1 FROM brands WHERE brand_id = $1", brand_id):
                raise NotFound(f"no brand {brand_id!r}", field="brand_id")
            if await q.fetch("SELECT 1 FROM stores WHERE store_id = $1", store_id):
                raise AlreadyExists(f"store {store_id!r} already exists", field="store_id")
            await insert_store(q, store_id, brand_id, now)
            await q.fetch(
                "INSERT INTO claim_tokens (token_hash, store_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
                token_hash, store_id, now, expires_at,
            )
            row = one(await q.fetch(f"SELECT {_STORE_COLUMNS} FROM stores WHERE store_id = $1", store_id))
        assert row is not None
        return _store(row)

    async def new_claim_token(self, store_id: str, token_hash: bytes, expires_at: int, now: int) -> None:
        """Replace the store's unused tokens with this one; only for a store with no live key."""
        async with self._write() as q:
            row = one(await q.fetch(
                f"SELECT revoked_at, revoke_reason FROM stores WHERE store_id = $1{q.dialect.for_update}", store_id))
            if row is None:
                raise NotFound(f"no store {store_id!r}", field="store_id")
            if row[0] is not None:
                raise ConfigError(f"store {store_id} was revoked: {row[1]}", field="store_id")
            live = await q.fetch(
                "SELECT key_id FROM store_keys WHERE store_id = $1 AND revoked_at IS NULL"
                " AND (expires_at IS NULL OR expires_at > $2)",
                store_id, now,
            )
            if live:
                raise ConfigError(
                    f"store {store_id} is enrolled (key {live[0][0]}): rotate its key from the edge"
                    " (loyalty-edge rotate-key), or revoke the key first", field="store_id")
            await q.fetch("DELETE FROM claim_tokens WHERE store_id = $1 AND used_at IS NULL", store_id)
            await q.fetch(
                "INSERT INTO claim_tokens (token_hash, store_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
                token_hash, store_id, now, expires_at,
            )

    async def claim_tokens(self, store_id: str) -> list[ClaimTokenRecord]:
        async with self._read() as q:
            rows = await q.fetch(
                "SELECT store_id, created_at, expires_at, used_at, key_id FROM claim_tokens WHERE store_id = $1"
                " ORDER BY created_at",
                store_id,
            )
        return [ClaimTokenRecord(*r) for r in rows]

    async def claim_store(self, token_hash: bytes, public_key: bytes, now: int) -> ClaimedStore:
        """Register ``public_key`` for the token's store and use the token up; KeyRefused if the token is
        unknown, expired or used by another key, or the store revoked. The same key again is answered
        again (its first answer may have been lost)."""
        key_id = checks.check_public_key(public_key)
        async with self._write() as q:
            row = one(await q.fetch(
                "SELECT t.store_id, t.expires_at, t.used_at, t.key_id, s.brand_id, s.revoked_at, s.revoke_reason"
                f" FROM claim_tokens t JOIN stores s ON s.store_id = t.store_id WHERE t.token_hash = $1"
                f"{q.dialect.for_update}",
                token_hash,
            ))
            if row is None:
                raise KeyRefused(401, "unknown_claim_token",
                                 "no such claim token (mistyped, or replaced by a newer one)", "token")
            store_id, expires_at, used_at, used_by, brand_id, revoked_at, reason = row
            if revoked_at is not None:
                raise _revoked(store_id, reason)
            if used_at is not None:
                if used_by == key_id:
                    return ClaimedStore(store_id, brand_id, key_id, replayed=True)
                raise KeyRefused(409, "claim_token_used",
                                 f"this claim token was already used by key {used_by}; make another with"
                                 f" `loyalty-cloud store token {store_id}`", "token")
            if now >= expires_at:
                raise KeyRefused(410, "claim_token_expired",
                                 f"this claim token expired; make another with `loyalty-cloud store token {store_id}`",
                                 "token")
            if await q.fetch("SELECT 1 FROM store_keys WHERE key_id = $1 OR public_key = $2", key_id, public_key):
                raise KeyRefused(409, "key_exists", f"key {key_id} is already registered", "public_key")
            await q.fetch(
                "INSERT INTO store_keys (key_id, store_id, public_key, created_at) VALUES ($1, $2, $3, $4)",
                key_id, store_id, public_key, now,
            )
            await q.fetch(
                "UPDATE claim_tokens SET used_at = $1, key_id = $2 WHERE token_hash = $3", now, key_id, token_hash
            )
        return ClaimedStore(store_id, brand_id, key_id, replayed=False)

    # ---- store keys

    async def rotate_store_key(
        self, store_id: str, old_key_id: str, public_key: bytes, old_key_expires_at: int, now: int
    ) -> RotatedKey:
        """Register the store's next key; the old one works until ``old_key_expires_at``.
        A key is replaced once; the same rotation again is answered again."""
        key_id = checks.check_public_key(public_key)
        async with self._write() as q:
            old_row = one(await q.fetch(f"{KEY_SELECT} WHERE k.key_id = $1{q.dialect.for_update}", old_key_id))
            old = None if old_row is None else key_from_row(old_row)
            if old is None or old.store_id != store_id:
                raise KeyRefused(403, "foreign_key", f"key {old_key_id} is not a key of store {store_id}",
                                 "old_key_id")
            if old.store_revoked_at is not None:
                raise _revoked(store_id, old.store_revoke_reason)
            if old.revoked_at is not None:
                raise KeyRefused(403, "key_revoked", f"key {old_key_id} was revoked", "old_key_id")
            if old.replaced_by == key_id and old.expires_at is not None:
                return RotatedKey(store_id, old_key_id, key_id, old.expires_at, replayed=True)
            if old.replaced_by is not None:
                raise KeyRefused(409, "key_already_rotated",
                                 f"key {old_key_id} was already replaced by {old.replaced_by}", "old_key_id")
            if old.expires_at is not None and now >= old.expires_at:
                raise KeyRefused(403, "key_expired", f"key {old_key_id} has expired", "old_key_id")
            if await q.fetch("SELECT 1 FROM store_keys WHERE key_id = $1 OR public_key = $2", key_id, public_key):
                raise KeyRefused(409, "key_exists", f"key {key_id} is already registered", "public_key")
            await q.fetch(
                "INSERT INTO store_keys (key_id, store_id, public_key, created_at) VALUES ($1, $2, $3, $4)",
                key_id, store_id, public_key, now,
            )
            await q.fetch(
                "UPDATE store_keys SET expires_at = $1, replaced_by = $2 WHERE key_id = $3",
                old_key_expires_at, key_id, old_key_id,
            )
        return RotatedKey(store_id, old_key_id, key_id, old_key_expires_at, replayed=False)

    async def store_keys(self, store_id: str) -> list[KeyRecord]:
        async with self._read() as q:
            if not await q.fetch("SELECT 1 FROM stores WHERE store_id = $1", store_id):
                raise NotFound(f"no store {store_id!r}", field="store_id")
            rows = await q.fetch(f"{KEY_SELECT} WHERE k.store_id = $1 ORDER BY k.created_at, k.key_id", store_id)
        return [key_from_row(r) for r in rows]

    async def set_key_expiry(self, store_id: str, expires_at: int) -> list[KeyRecord]:
        """End (or reopen) the overlap window of the store's replaced, unrevoked keys; the store's keys."""
        async with self._write() as q:
            if not await q.fetch("SELECT 1 FROM stores WHERE store_id = $1", store_id):
                raise NotFound(f"no store {store_id!r}", field="store_id")
            await q.fetch(
                "UPDATE store_keys SET expires_at = $1 WHERE store_id = $2 AND replaced_by IS NOT NULL"
                " AND revoked_at IS NULL",
                expires_at, store_id,
            )
            rows = await q.fetch(f"{KEY_SELECT} WHERE k.store_id = $1 ORDER BY k.created_at, k.key_id", store_id)
        return [key_from_row(r) for r in rows]

    async def revoke_store(self, store_id: str, reason: str, now: int) -> StoreRecord:
        """Refuse everything the store signs from now on, and drop its unused claim tokens."""
        checks.check_name(reason, max_len=500)
        async with self._write() as q:
            await q.fetch(
                "UPDATE stores SET revoked_at = $1, revoke_reason = $2 WHERE store_id = $3 AND revoked_at IS NULL",
                now, reason, store_id,
            )
            row = one(await q.fetch(f"SELECT {_STORE_COLUMNS} FROM stores WHERE store_id = $1", store_id))
            if row is None:
                raise NotFound(f"no store {store_id!r}", field="store_id")
            await q.fetch("DELETE FROM claim_tokens WHERE store_id = $1 AND used_at IS NULL", store_id)
        return _store(row)

    # ---- the cloud's own key versions

    async def cloud_keys(self) -> list[CloudKeyRecord]:
        async with self._read() as q:
            rows = await q.fetch(f"SELECT {_CLOUD_KEY_COLUMNS} FROM cloud_keys ORDER BY version")
        return [_cloud_key(r) for r in rows]

    async def add_cloud_key(self, record: CloudKeyRecord) -> CloudKeyRecord:
        """Record the next version (1 on an empty table); AlreadyExists if another rotation took it."""
        async with self._write() as q:
            rows = await q.fetch("SELECT COALESCE(MAX(version), 0) FROM cloud_keys")
            if record.version != rows[0][0] + 1:
                raise AlreadyExists(
                    f"cloud key version {rows[0][0]} is the newest; version {record.version} cannot follow it",
                    field="version")
            if await q.fetch("SELECT 1 FROM cloud_keys WHERE key_id = $1", record.key_id):
                raise AlreadyExists(f"cloud key {record.key_id} is already registered", field="key")
            await q.fetch(
                f"INSERT INTO cloud_keys ({_CLOUD_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)",
                record.version, record.key_id, record.public_key, record.announcement, record.overlap_ms,
                record.created_at,
            )
        return record
