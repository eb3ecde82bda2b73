"""Helpers for the key tests: restart a cloud over its ledger with another key, claim, rotate."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.api import MSGPACK, SERVICE
from cloud.app import make_app
from cloud.keys import CloudKey
from cloud.store_keys_model import hash_claim_token, new_claim_token
from protocol import MessageType, open_envelope
from protocol.key_messages import StoreKeyRotated, decode_store_key_rotated, seal_claim, seal_store_key_rotation

from . import cloudkit as k


@asynccontextmanager
async def cloud_app(
    data: Path, key: CloudKey, backend: k.Backend, clock: k.Clock, port: int = 0
) -> AsyncIterator[TestClient[Any, Any]]:
    """The cloud app over an existing ledger (no seeding), signing with ``key``, on ``port`` (0: any)."""
    app = make_app(lambda: backend.storage(data), key, clock=clock)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1", port=port))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def forget_key_versions(client: TestClient[Any, Any]) -> None:
    """The sync service reads key versions at most every 5 s: a test that just rotated asks again."""
    client.server.app[SERVICE].key_chain.forget()


async def post(client: TestClient[Any, Any], path: str, data: bytes) -> tuple[int, bytes]:
    resp = await client.post(path, data=data, headers={"Content-Type": MSGPACK})
    return resp.status, await resp.read()


async def add_claimable_store(cloud: k.Cloud, store_id: str, *, ttl_ms: int = 3_600_000) -> str:
    token = new_claim_token()
    now = cloud.clock()
    await cloud.storage.add_store_to_claim(store_id, k.BRAND, hash_claim_token(token), now + ttl_ms, now)
    return token


def claim_envelope(token: str, key: Ed25519PrivateKey, *, at: int | None = None) -> bytes:
    return seal_claim(token, key, os.urandom(16), at if at is not None else k.now_ms())


def rotation_envelope(signer: k.StoreSigner, new_key: Ed25519PrivateKey, *, at: int | None = None,
                      nonce: bytes | None = None) -> bytes:
    return seal_store_key_rotation(signer.store_id, signer.key, new_key, nonce or os.urandom(16),
                                   at if at is not None else k.now_ms())


def open_rotated(data: bytes, cloud_key: CloudKey) -> StoreKeyRotated:
    return decode_store_key_rotated(open_envelope(data, MessageType.STORE_KEY_ACK).verify(cloud_key.public))
