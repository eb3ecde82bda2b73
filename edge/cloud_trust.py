"""The cloud keys this node accepts, and how a new one is taken without a visit.

The node starts from one pinned key (from its enrollment, or
``cloud_public_key`` in the config). A cloud key rotation is announced on
downlinks: a CLOUD_KEY envelope signed by the key it succeeds, with the new
key's proof. The node takes an announcement only if it is signed by its
*newest* key and names a higher version, so the keys form one chain and an
older announcement never replaces a newer one. A node that missed the
announcement (offline while the cloud switched) meets an envelope signed by
a key it does not know; it then fetches the chain (GET /v1/cloud-keys) and
walks it from its newest key. Once a newer key has been seen in use, the
keys before it still verify for that key's overlap, then are refused.

``CloudTrust`` is pure (values in, values out); ``TrustKeeper`` does the
fetching and hands the changes to a persistence callback (the writer).
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol import MessageType, RemoteProtocolError, key_id_for, load_public_key, open_envelope
from protocol.key_messages import decode_cloud_key, decode_key_chain
from protocol.messages import MAX_CLOUD_KEYS

log = logging.getLogger(__name__)

#: Chain pages fetched at most when meeting an unknown key (MAX_CLOUD_KEYS links each).
MAX_CHAIN_PAGES = 8
_COLUMNS = "seq, key_id, public_key, version, overlap_ms, retire_at"


@dataclass(frozen=True, slots=True)
class TrustedKey:
    seq: int  # local order: the highest is the newest
    key_id: str
    public_key: bytes
    version: int  # the cloud's number; 0 for a key pinned by hand
    overlap_ms: int  # how long the keys before this one verify once it is seen in use
    retire_at: int | None  # refused from then on

    @property
    def public(self) -> Ed25519PublicKey:
        return load_public_key(self.public_key)


@dataclass(frozen=True, slots=True)
class Adopted:
    key: TrustedKey
    announcement: bytes


class CloudTrust:
    """An ordered set of trusted cloud keys (immutable: every change returns a new one)."""

    def __init__(self, keys: Sequence[TrustedKey]) -> None:
        if not keys:
            raise ValueError("a node trusts at least its pinned cloud key")
        self.keys = tuple(sorted(keys, key=lambda k: k.seq))
        self._by_id = {k.key_id: k for k in self.keys}

    @property
    def newest(self) -> TrustedKey:
        return self.keys[-1]

    def knows(self, key_id: str) -> bool:
        return key_id in self._by_id

    def key(self, key_id: str, now: int) -> TrustedKey:
        """The trusted key of that id, or RemoteProtocolError (401) if unknown or retired."""
        key = self._by_id.get(key_id)
        if key is None:
            raise RemoteProtocolError(f"the cloud signed with {key_id}, a key this node does not trust",
                                      status_hint=401, code="unknown_cloud_key", field="key_id")
        if key.retire_at is not None and now >= key.retire_at:
            raise RemoteProtocolError(
                f"the cloud signed with {key_id}, a key this node stopped accepting (a newer cloud key is in use,"
                " or cloud_public_key names another)", status_hint=401, code="retired_cloud_key", field="key_id")
        return key

    def extend(self, envelopes: Sequence[bytes]) -> tuple[CloudTrust, list[Adopted]]:
        """The trust after every announcement that extends the newest key, in order; others are
        ignored (older links, or ones from another branch). A link signed by the newest key that does
        not hold is a RemoteProtocolError: no honest cloud sends one."""
        trust, adopted = self, []
        for data in envelopes:
            envelope = open_envelope(data, MessageType.CLOUD_KEY)
            newest = trust.newest
            if envelope.key_id != newest.key_id:
                continue
            announcement = decode_cloud_key(envelope.verify(newest.public))
            if announcement.previous_key_id != newest.key_id or announcement.version <= newest.version:
                continue
            if trust.knows(announcement.key_id):
                continue
            key = TrustedKey(newest.seq + 1, announcement.key_id, announcement.public_key, announcement.version,
                             announcement.overlap_ms, None)
            trust = CloudTrust((*trust.keys, key))
            adopted.append(Adopted(key, data))
        return trust, adopted

    def retirements(self, used: TrustedKey, now: int) -> dict[str, int]:
        """Keys older than ``used`` that start their last ``used.overlap_ms`` now (key id -> retire_at)."""
        return {k.key_id: now + used.overlap_ms for k in self.keys if k.seq < used.seq and k.retire_at is None}

    def retire(self, retire_at: dict[str, int]) -> CloudTrust:
        return CloudTrust([dataclasses.replace(k, retire_at=retire_at.get(k.key_id, k.retire_at)) for k in self.keys])


# ---- storage (run by the writer, or on a connection of the CLI's)


def read_keys(conn: sqlite3.Connection) -> list[TrustedKey]:
    return [TrustedKey(r[0], r[1], bytes(r[2]), r[3], r[4], r[5])
            for r in conn.execute(f"SELECT {_COLUMNS} FROM cloud_keys ORDER BY seq")]


def with_pin(keys: Sequence[TrustedKey], public_key: bytes, now: int) -> list[TrustedKey]:
    """The trusted keys once ``public_key`` is pinned (``pin`` without the database): a key not trusted yet
    replaces them all, since an operator pins a key by hand to stop trusting the others."""
    if any(k.public_key == public_key for k in keys):
        return list(keys)
    retired = [dataclasses.replace(k, retire_at=now) for k in keys]
    seq = keys[-1].seq + 1 if keys else 1
    return [*retired, TrustedKey(seq, key_id_for(load_public_key(public_key)), public_key, 0, 0, None)]


def pin(public_key: bytes, version: int, now: int) -> Callable[[sqlite3.Connection], list[TrustedKey]]:
    """Writer job: trust ``public_key`` (config or enrollment) and return the trusted keys. A key pinned
    that the node does not trust yet becomes the only one: an operator who sets cloud_public_key by hand
    means to stop trusting the others (a cloud that lost or leaked its key)."""
    key_id = key_id_for(load_public_key(public_key))

    def job(conn: sqlite3.Connection) -> list[TrustedKey]:
        row = conn.execute("SELECT version FROM cloud_keys WHERE key_id = ?", (key_id,)).fetchone()
        if row is None:
            if conn.execute("SELECT 1 FROM cloud_keys LIMIT 1").fetchone() is not None:
                log.warning("cloud_public_key %s is not among the trusted cloud keys: trusting it alone from now on",
                            key_id)
                conn.execute("UPDATE cloud_keys SET retire_at = ? WHERE retire_at IS NULL OR retire_at > ?",
                             (now, now))
            conn.execute(
                "INSERT INTO cloud_keys (key_id, public_key, version, overlap_ms, adopted_at) VALUES (?, ?, ?, 0, ?)",
                (key_id, public_key, version, now),
            )
        elif row[0] == 0 and version:
            conn.execute("UPDATE cloud_keys SET version = ? WHERE key_id = ?", (version, key_id))
        return read_keys(conn)

    return job


def save_adopted(adopted: Sequence[Adopted], now: int) -> Callable[[sqlite3.Connection], None]:
    def job(conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT OR IGNORE INTO cloud_keys (seq, key_id, public_key, version, overlap_ms, announcement,"
            " adopted_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(a.key.seq, a.key.key_id, a.key.public_key, a.key.version, a.key.overlap_ms, a.announcement, now)
             for a in adopted],
        )

    return job


def save_retirements(retire_at: dict[str, int]) -> Callable[[sqlite3.Connection], None]:
    def job(conn: sqlite3.Connection) -> None:
        conn.executemany("UPDATE cloud_keys SET retire_at = ? WHERE key_id = ? AND retire_at IS NULL",
                         [(at, key_id) for key_id, at in retire_at.items()])

    return job


# ---- the keeper: verification with chain following and persistence


class TrustKeeper:
    """Opens the cloud's envelopes with the trusted keys, following the chain to a key not known yet."""

    def __init__(
        self,
        trust: CloudTrust,
        fetch_chain: Callable[[str], Awaitable[bytes]],
        persist: Callable[[Callable[[sqlite3.Connection], None]], Awaitable[None]] | None,
        now_ms: Callable[[], int],
    ) -> None:
        self.trust = trust
        self._fetch_chain = fetch_chain
        self._persist = persist
        self._now_ms = now_ms

    async def open(self, data: bytes, type_: MessageType) -> bytes:
        """The verified body of a cloud envelope of ``type_``."""
        envelope = open_envelope(data, type_)
        if not self.trust.knows(envelope.key_id):
            await self._follow_chain(envelope.key_id)
        now = self._now_ms()
        used = self.trust.key(envelope.key_id, now)
        body = envelope.verify(used.public)
        retirements = self.trust.retirements(used, now)
        if retirements:
            await self._save(save_retirements(retirements))
            self.trust = self.trust.retire(retirements)
            log.info("cloud key %s (v%d) in use: older keys retire in %d s", used.key_id, used.version,
                     used.overlap_ms // 1000)
        return body

    async def adopt(self, envelopes: Sequence[bytes]) -> list[TrustedKey]:
        """Take the announcements that extend the chain (from a downlink or the chain endpoint)."""
        trust, adopted = self.trust.extend(envelopes)
        if adopted:
            await self._save(save_adopted(adopted, self._now_ms()))
            self.trust = trust
            for a in adopted:
                log.info("cloud key version %d (%s) announced and trusted", a.key.version, a.key.key_id)
        return [a.key for a in adopted]

    async def _follow_chain(self, key_id: str) -> None:
        for _ in range(MAX_CHAIN_PAGES):
            chain = decode_key_chain(await self._fetch_chain(self.trust.newest.key_id))
            adopted = await self.adopt(chain)
            if self.trust.knows(key_id) or not adopted or len(chain) < MAX_CLOUD_KEYS:
                return

    async def _save(self, job: Callable[[sqlite3.Connection], None]) -> None:
        if self._persist is not None:
            await self._persist(job)
