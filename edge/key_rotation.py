"""``loyalty-edge rotate-key``: a new store key, announced to the cloud, then switched to.

1. ``prepare``: the current key, and the next one in ``<key file>.new``
   (made with mode 0600, or the one an interrupted rotation left there);
2. ``announce``: the new public key, signed by the old key and proven by the
   new one, and the cloud's signed answer (when the old key stops working);
3. ``switch``: only once the cloud has answered, the new key replaces the
   old file (one rename). A running edge signs with it from its next sync
   round (under systemd, after a restart: the key is a credential copy).

Batches cut before the switch are resent byte for byte under the old key,
which the cloud accepts until the end of the overlap window.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import MessageType, RemoteProtocolError, key_id_for, public_bytes
from protocol.key_messages import StoreKeyRotated, decode_store_key_rotated, seal_store_key_rotation

from .cloud_trust import CloudTrust, TrustedKey, TrustKeeper, read_keys, with_pin
from .config import EdgeConfig
from .db import connect
from .keyfile import create_key, load_key
from .sync import CloudTransport


@dataclass(frozen=True, slots=True)
class RotationPlan:
    old: Ed25519PrivateKey
    new: Ed25519PrivateKey
    new_path: Path
    trust: CloudTrust
    batches_waiting: int  # cut and signed by the old key, not acknowledged yet

    @property
    def old_key_id(self) -> str:
        return key_id_for(self.old.public_key())

    @property
    def key_id(self) -> str:
        return key_id_for(self.new.public_key())


def next_key_path(key_path: Path) -> Path:
    return key_path.with_name(key_path.name + ".new")


def trusted_and_waiting(config: EdgeConfig, now: int) -> tuple[list[TrustedKey], int]:
    """The cloud keys the node trusts (with the config's pin) and its unacknowledged batches, read beside
    a running edge."""
    keys: list[TrustedKey] = []
    waiting = 0
    try:
        conn = connect(config.db_path, readonly=True)
        try:
            waiting = int(conn.execute("SELECT COUNT(*) FROM batches WHERE acked_at IS NULL").fetchone()[0])
            keys = read_keys(conn)
        finally:
            conn.close()
    except sqlite3.Error:  # no database yet, or one no edge of this version has opened
        pass
    return with_pin(keys, config.cloud_key_bytes(), now), waiting


def prepare(config: EdgeConfig) -> RotationPlan:
    old = load_key(config.key_path)
    new_path = next_key_path(config.key_path)
    new = load_key(new_path) if new_path.exists() else create_key(new_path)
    keys, waiting = trusted_and_waiting(config, int(time.time() * 1000))
    return RotationPlan(old, new, new_path, CloudTrust(keys), waiting)


async def announce(
    plan: RotationPlan, store_id: str, client: CloudTransport, now_ms: Callable[[], int]
) -> StoreKeyRotated:
    """The cloud's answer to the rotation; CloudRefused, CloudUnavailable or a ProtocolError otherwise."""
    nonce = os.urandom(16)
    envelope = seal_store_key_rotation(store_id, plan.old, plan.new, nonce, now_ms())
    reply = await client.post_envelope("/v1/store-keys", envelope)
    # the serving edge records newer cloud keys itself; here they are only followed
    keeper = TrustKeeper(plan.trust, lambda after: client.get_bytes(f"/v1/cloud-keys?after={quote(after, safe='')}"),
                         None, now_ms)
    answer = decode_store_key_rotated(await keeper.open(reply, MessageType.STORE_KEY_ACK))
    if (answer.nonce, answer.store_id, answer.old_key_id, answer.key_id) != (
            nonce, store_id, plan.old_key_id, plan.key_id):
        raise RemoteProtocolError("the answer does not answer our rotation", code="wrong_answer")
    return answer


def switch(plan: RotationPlan, key_path: Path) -> None:
    """Put the new key in the key file's place, atomically and durably."""
    if public_bytes(load_key(plan.new_path).public_key()) != public_bytes(plan.new.public_key()):
        raise RuntimeError(f"{plan.new_path} changed during the rotation")  # a bug or a second operator
    os.replace(plan.new_path, key_path)
    fd = os.open(key_path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
