"""The cloud's signing key versions: registering the serving key, rotating, announcing.

Version 1 is the key ``init`` made. ``loyalty-cloud key rotate`` makes the
next key file and records its announcement (a CLOUD_KEY envelope signed by
the newest key, with the new key's proof); from then on every downlink
carries it to the edges, which trust the new key as the successor of the one
they have. The operator switches the service to the new key file when the
edges have had time to hear (a restart); an edge that was offline all along
still follows: it fetches the chain (GET /v1/cloud-keys) when it meets a key
it does not know, and checks every link from the key it trusts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from protocol import MessageType, open_envelope, public_bytes, seal
from protocol.key_messages import seal_cloud_key
from protocol.messages import MAX_CLOUD_KEYS

from .errors import ConfigError
from .keys import CloudKey, create_key, load_key
from .storage import Storage
from .store_keys_model import CloudKeyRecord

log = logging.getLogger(__name__)

#: How stale the in-memory copy of the key versions may be (a rotation reaches downlinks within this).
REFRESH_MS = 5_000


class KeyChain:
    """The cloud key versions and their announcements, read from the ledger at most every REFRESH_MS."""

    def __init__(self, storage: Storage, clock: Callable[[], int], refresh_ms: int = REFRESH_MS) -> None:
        self.storage = storage
        self.clock = clock
        self.refresh_ms = refresh_ms
        self._records: list[CloudKeyRecord] = []
        self._read_at: int | None = None

    async def records(self) -> list[CloudKeyRecord]:
        now = self.clock()
        if self._read_at is None or now - self._read_at >= self.refresh_ms or now < self._read_at:
            self._records = await self.storage.cloud_keys()
            self._read_at = now
        return self._records

    def forget(self) -> None:
        """Read the versions again on next use (after this process changed them)."""
        self._read_at = None

    async def version_of(self, key_id: str) -> int | None:
        return next((r.version for r in await self.records() if r.key_id == key_id), None)

    async def after(self, key_id: str | None) -> tuple[bytes, ...]:
        """The announcements of the versions after ``key_id``'s, oldest first (at most MAX_CLOUD_KEYS:
        the edge asks again from the newest it took). For a key this ledger does not know, from the start:
        the edge takes the links that extend a key it trusts, and ignores the others."""
        records = await self.records()
        version = next((r.version for r in records if r.key_id == key_id), 0)
        return tuple(r.announcement for r in records if r.version > version and r.announcement is not None)[
            :MAX_CLOUD_KEYS]


async def register_serving_key(storage: Storage, key: CloudKey, now: int) -> int:
    """The version of the key this process signs with; an empty table takes it as version 1.
    ConfigError for a key the ledger does not know (another cloud's, or a typo in --key-file)."""
    records = await storage.cloud_keys()
    if not records:
        await storage.add_cloud_key(CloudKeyRecord(1, key.key_id, public_bytes(key.public), None, 0, now))
        log.info("cloud key %s registered as version 1", key.key_id)
        return 1
    version = next((r.version for r in records if r.key_id == key.key_id), None)
    if version is None:
        known = ", ".join(f"v{r.version} {r.key_id}" for r in records)
        raise ConfigError(f"the cloud key {key.key_id} is not one of this ledger's keys ({known})", field="key")
    if version < records[-1].version:
        log.warning("signing with cloud key version %d; version %d is announced: switch to its key file",
                    version, records[-1].version)
    return version


def next_key(path: Path) -> CloudKey:
    """The next key's file: made (mode 0600), or the one an interrupted rotation left there."""
    return load_key(path) if path.exists() or path.is_symlink() else create_key(path)


async def rotate_cloud_key(
    storage: Storage, current: CloudKey, new: CloudKey, overlap_ms: int, now: int
) -> CloudKeyRecord:
    """Record the announcement of ``new`` as the next version, signed by ``current``, which must
    be the newest version."""
    records = await storage.cloud_keys()
    if not records:
        raise ConfigError("the ledger has no cloud key yet: start `loyalty-cloud serve` or run init", field="key")
    newest = records[-1]
    if newest.key_id != current.key_id:
        raise ConfigError(
            f"the key file holds {current.key_id}, but the newest cloud key is v{newest.version} {newest.key_id}:"
            " rotate from the newest key's file", field="key_file")
    if new.key_id == current.key_id:
        raise ConfigError("the new key file holds the current key", field="new_key_file")
    version = newest.version + 1
    announcement = seal_cloud_key(version, current.private, new.private, overlap_ms, now)
    record = CloudKeyRecord(version, new.key_id, public_bytes(new.public), announcement, overlap_ms, now)
    return await storage.add_cloud_key(record)


def reseal(sealed: bytes, type_: MessageType, key: CloudKey) -> bytes:
    """A stored envelope of ours signed again with ``key`` if an older cloud key sealed it (the body,
    and so the ack's batch hash and results, stay the same bytes)."""
    envelope = open_envelope(sealed, type_)
    if envelope.key_id == key.key_id:
        return sealed
    return seal(type_, envelope.body, key.private, key.key_id)
