"""Enrollment by claim token, store key rotation and revocation, over real HTTP on both backends.

Every refusal is checked against a raw snapshot of the ledger: a reused,
expired, unknown or forged claim, or a refused rotation, changes nothing.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.cloud_keyring import rotate_cloud_key
from cloud.errors import ConfigError
from cloud.keys import create_key
from protocol import MessageType, key_id_for, open_ack, open_envelope, public_bytes, seal
from protocol.key_messages import (
    StoreKeyRotation,
    decode_key_chain,
    encode_store_key_rotation,
    open_cloud_key,
    open_enrollment,
    seal_store_key_rotation,
)

from . import cloudkit as k
from . import keykit as kk

WEEK_MS = 7 * 24 * 3600 * 1000


@pytest.fixture
async def cloud(tmp_path: Any, backend: k.Backend) -> AsyncIterator[k.Cloud]:
    async with k.running_cloud(tmp_path, backend) as running:
        yield running


async def refused(cloud: k.Cloud, path: str, data: bytes, status: int, code: str) -> dict[str, Any]:
    """Post, expect the JSON error, and prove the ledger did not change."""
    before = await cloud.snapshot()
    got_status, error = await cloud.post_json_error(path, data)
    assert (got_status, error["code"]) == (status, code), error
    assert isinstance(error["message"], str) and error["message"]
    assert await cloud.snapshot() == before
    return error


# ------------------------------------------------------------------ claims


async def test_a_claimed_store_syncs_and_its_claim_is_answered_again(cloud: k.Cloud) -> None:
    token = await kk.add_claimable_store(cloud, "store-new")
    key = Ed25519PrivateKey.generate()
    status, body = await cloud.post("/v1/claim", kk.claim_envelope(token, key))
    assert status == 200, body
    enrollment = open_enrollment(body, public_bytes(cloud.key.public))  # the operator pinned the cloud key
    assert (enrollment.store_id, enrollment.brand_id) == ("store-new", k.BRAND)
    assert enrollment.key_id == key_id_for(key.public_key())
    assert (enrollment.cloud_key_id, enrollment.cloud_key_version) == (cloud.key.key_id, 1)
    rows = await cloud.backend.rows(cloud.db_path, "SELECT key_id, used_at IS NOT NULL FROM claim_tokens")
    assert rows == [(enrollment.key_id, True)]

    signer = k.StoreSigner("store-new", key=key)  # the edge's own key, registered by its claim
    cid = k.any_uuid()
    ack, _ = await cloud.send(signer, [k.enroll(cid), k.earn(cid, "s1", 40)])
    assert [r.points for r in ack.results] == [0, 40]
    downlink, _ = await cloud.pull(signer)
    assert downlink.store_id == "store-new" and downlink.program is not None

    # the answer was lost: the same key claims again and hears the same store (nothing new is written)
    before = await cloud.snapshot()
    status, again = await cloud.post("/v1/claim", kk.claim_envelope(token, key))
    assert status == 200 and open_enrollment(again).store_id == "store-new"
    assert await cloud.snapshot() == before


async def test_reused_expired_unknown_and_forged_claims_register_nothing(cloud: k.Cloud) -> None:
    token = await kk.add_claimable_store(cloud, "store-new", ttl_ms=60_000)
    first = Ed25519PrivateKey.generate()
    status, _ = await cloud.post("/v1/claim", kk.claim_envelope(token, first))
    assert status == 200
    thief = Ed25519PrivateKey.generate()
    error = await refused(cloud, "/v1/claim", kk.claim_envelope(token, thief), 409, "claim_token_used")
    assert "store token store-new" in error["message"] and error["field"] == "token"
    await refused(cloud, "/v1/claim", kk.claim_envelope("lck_" + "x" * 43, thief), 401, "unknown_claim_token")

    late = await kk.add_claimable_store(cloud, "store-late", ttl_ms=60_000)
    cloud.clock.offset = 61_000
    await refused(cloud, "/v1/claim", kk.claim_envelope(late, thief, at=cloud.clock()), 410, "claim_token_expired")
    cloud.clock.offset = 0

    fresh = await kk.add_claimable_store(cloud, "store-fresh")
    # someone who read the token but holds another key: the claim names the victim's key, signed by his
    victim = Ed25519PrivateKey.generate()
    good = kk.claim_envelope(fresh, victim)
    forged = bytearray(good)
    forged[-1] ^= 0x01
    await refused(cloud, "/v1/claim", bytes(forged), 401, "bad_signature")
    await refused(cloud, "/v1/claim", kk.claim_envelope(fresh, victim, at=k.now_ms() - 600_000), 401,
                  "stale_request")
    await refused(cloud, "/v1/claim", b"\x93\x01\x02\x03", 400, "bad_envelope")
    # a key already registered to another store cannot claim a second one
    await refused(cloud, "/v1/claim", kk.claim_envelope(fresh, first), 409, "key_exists")
    # a store revoked before its edge arrived: its token is gone with it
    await cloud.storage.revoke_store("store-fresh", "the shop never opened", cloud.clock())
    await refused(cloud, "/v1/claim", kk.claim_envelope(fresh, victim), 401, "unknown_claim_token")
    status, _ = await cloud.post("/v1/claim", kk.claim_envelope(fresh, victim))
    assert status == 401


# ---------------------------------------------------------------- rotation


async def test_rotation_keeps_a_batch_cut_before_it_and_retires_the_old_key_after_the_window(cloud: k.Cloud) -> None:
    store = cloud.stores["store-a"]
    cid = k.any_uuid()
    await cloud.send(store, [k.enroll(cid), k.earn(cid, "s0", 100)])
    # a batch cut (and stored by the edge) before the rotation, not yet sent
    in_flight, in_flight_hash = store.batch([k.earn(cid, "s1", 30)])
    old_key = store.key
    new_key = Ed25519PrivateKey.generate()
    rotation = kk.rotation_envelope(store, new_key)
    status, body = await cloud.post("/v1/store-keys", rotation)
    assert status == 200, body
    rotated = kk.open_rotated(body, cloud.key)
    assert (rotated.old_key_id, rotated.key_id) == (store.key_id, key_id_for(new_key.public_key()))
    assert WEEK_MS - 60_000 < rotated.old_key_expires_at - k.now_ms() <= WEEK_MS

    # sent after the rotation, byte for byte under the old key: applied once
    status, raw = await cloud.post("/v1/batches", in_flight)
    assert status == 200
    assert open_ack(raw, cloud.key.public).results[0].points == 30
    store.advance(in_flight_hash)
    assert (await cloud.post("/v1/batches", in_flight)) == (200, raw)
    # both keys work in the window
    downlink, _ = await cloud.pull(store)
    assert downlink.store_id == "store-a"
    store.key = new_key
    ack, _ = await cloud.send(store, [k.earn(cid, "s2", 20)])
    assert ack.seq == 3
    assert await cloud.balances() == {cid: 150}

    # the same rotation again (its answer lost) is answered again; another successor is refused
    status, again = await cloud.post("/v1/store-keys", rotation)
    assert status == 200 and kk.open_rotated(again, cloud.key).old_key_expires_at == rotated.old_key_expires_at
    old_signer = k.StoreSigner("store-a", key=old_key)
    await refused(cloud, "/v1/store-keys", kk.rotation_envelope(old_signer, Ed25519PrivateKey.generate()), 409,
                  "key_already_rotated")

    # after the window the old key is refused for everything, even the batch it already sent
    cloud.clock.offset = WEEK_MS + 1_000
    error = await refused(cloud, "/v1/batches", in_flight, 403, "key_expired")
    assert store.key_id in error["message"]
    old_signer.seq, old_signer.prev_hash = store.seq, store.prev_hash
    data, _ = old_signer.pull(at=cloud.clock())
    await refused(cloud, "/v1/pull", data, 403, "key_expired")
    data, _ = store.pull(at=cloud.clock())
    assert (await cloud.post("/v1/pull", data))[0] == 200  # the new key works on


async def test_refused_rotations_change_nothing(cloud: k.Cloud) -> None:
    store, other = cloud.stores["store-a"], cloud.stores["store-b"]
    new_key = Ed25519PrivateKey.generate()
    # the new key's proof made by someone else
    good = kk.rotation_envelope(store, new_key)
    rotation = StoreKeyRotation(store.store_id, store.key_id, key_id_for(new_key.public_key()),
                                public_bytes(new_key.public_key()), os.urandom(16), k.now_ms(), bytes(64))
    await refused(cloud, "/v1/store-keys", seal(MessageType.STORE_KEY, encode_store_key_rotation(rotation),
                                                store.key, store.key_id), 401, "bad_proof")
    # store b's key naming a successor for store a
    foreign = seal_store_key_rotation("store-a", other.key, new_key, os.urandom(16), k.now_ms())
    await refused(cloud, "/v1/store-keys", foreign, 403, "foreign_key")
    await refused(cloud, "/v1/store-keys", kk.rotation_envelope(store, new_key, at=k.now_ms() - 600_000), 401,
                  "stale_request")
    await refused(cloud, "/v1/store-keys", kk.rotation_envelope(store, other.key), 409, "key_exists")
    await refused(cloud, "/v1/store-keys", kk.rotation_envelope(k.StoreSigner("store-a"), new_key), 401,
                  "unknown_key")
    # an envelope of another type on this route
    await refused(cloud, "/v1/store-keys", store.batch([k.enroll()])[0], 400, "wrong_type")
    assert (await cloud.post("/v1/store-keys", good))[0] == 200


async def test_operator_ends_or_reopens_the_overlap_window(cloud: k.Cloud) -> None:
    store = cloud.stores["store-a"]
    new_key = Ed25519PrivateKey.generate()
    assert (await cloud.post("/v1/store-keys", kk.rotation_envelope(store, new_key)))[0] == 200
    old = k.StoreSigner("store-a", key=store.key)
    keys = await cloud.storage.set_key_expiry("store-a", cloud.clock())
    assert [key.key_id for key in keys if key.replaced_by] == [old.key_id]
    await refused(cloud, "/v1/batches", old.batch([k.enroll()])[0], 403, "key_expired")
    await cloud.storage.set_key_expiry("store-a", cloud.clock() + 3_600_000)
    assert (await cloud.post("/v1/batches", old.batch([k.enroll()])[0]))[0] == 200


# -------------------------------------------------------------- revocation


async def test_revoked_store_is_refused_with_its_reason(cloud: k.Cloud) -> None:
    store = cloud.stores["store-a"]
    cid = k.any_uuid()
    await cloud.send(store, [k.enroll(cid)])
    revoked = await cloud.storage.revoke_store("store-a", "till stolen on 3 March", cloud.clock())
    assert revoked.revoke_reason == "till stolen on 3 March" and revoked.revoked_at is not None
    data, _ = store.batch([k.earn(cid, "s1", 10)])
    error = await refused(cloud, "/v1/batches", data, 403, "store_revoked")
    assert "till stolen on 3 March" in error["message"] and error["reason"] == "till stolen on 3 March"
    pull, _ = store.pull()
    await refused(cloud, "/v1/pull", pull, 403, "store_revoked")
    # the reason is for the store only: a forged envelope naming its key hears of a bad signature
    forged = bytearray(data)
    forged[-1] ^= 0x01
    error = await refused(cloud, "/v1/batches", bytes(forged), 401, "bad_signature")
    assert "stolen" not in str(error)
    await refused(cloud, "/v1/store-keys", kk.rotation_envelope(store, Ed25519PrivateKey.generate()), 403,
                  "store_revoked")
    listed = {s.store_id: s for s in await cloud.storage.list_stores()}
    assert listed["store-a"].revoke_reason == "till stolen on 3 March" and listed["store-b"].revoked_at is None
    await cloud.send(cloud.stores["store-b"], [k.enroll()])  # the other stores go on


async def test_revoking_one_key_refuses_it_only(cloud: k.Cloud) -> None:
    store = cloud.stores["store-a"]
    spare = k.StoreSigner("store-a")
    await cloud.storage.add_store_key("store-a", spare.public_raw, cloud.clock())
    await cloud.storage.revoke_key(store.key_id, cloud.clock())
    await refused(cloud, "/v1/batches", store.batch([k.enroll()])[0], 403, "key_revoked")
    ack, _ = await cloud.send(spare, [k.enroll()])
    assert ack.store_id == "store-a"



# --------------------------------------------------------------- cloud key


async def test_cloud_key_rotation_is_announced_on_downlinks_then_served(tmp_path: Any, backend: k.Backend) -> None:
    clock = k.Clock()
    data_dir = tmp_path / "cloud"
    async with k.running_cloud(tmp_path, backend, clock=clock) as cloud:
        store = cloud.stores["store-a"]
        store.cloud_key_id = cloud.key.key_id
        cid = k.any_uuid()
        first, first_hash = store.batch([k.enroll(cid), k.earn(cid, "s1", 70)])
        status, first_ack = await cloud.post("/v1/batches", first)
        assert status == 200
        store.advance(first_hash)
        assert (await cloud.pull(store))[0].cloud_keys == ()

        new = create_key(data_dir / "cloud.key.new")
        record = await rotate_cloud_key(cloud.storage, cloud.key, new, 3_600_000, clock())
        assert (record.version, record.key_id) == (2, new.key_id)
        kk.forget_key_versions(cloud.client)
        downlink, _ = await cloud.pull(store)  # still signed by version 1, announcing version 2
        assert downlink.cloud_keys == (record.announcement,)
        announcement = open_cloud_key(downlink.cloud_keys[0], cloud.key.public)
        assert (announcement.version, announcement.key_id, announcement.overlap_ms) == (2, new.key_id, 3_600_000)
        store.cloud_key_id = new.key_id  # an edge that took it hears of nothing newer
        assert (await cloud.pull(store))[0].cloud_keys == ()

        resp = await cloud.client.get("/v1/cloud-keys")
        assert resp.status == 200 and decode_key_chain(await resp.read()) == (record.announcement,)
        resp = await cloud.client.get("/v1/cloud-keys", params={"after": new.key_id})
        assert decode_key_chain(await resp.read()) == ()
        for params in ({"before": "x"}, {"after": "k" * 65}):
            resp = await cloud.client.get("/v1/cloud-keys", params=params)
            assert resp.status == 400 and set((await resp.json())["error"]) >= {"code", "message", "field"}
        with pytest.raises(ConfigError, match="newest"):  # only the newest key names the next one
            await rotate_cloud_key(cloud.storage, cloud.key, create_key(tmp_path / "third.key"), 0, clock())

    async with kk.cloud_app(data_dir, new, backend, clock) as client:  # the service switched to the new key
        status, again = await kk.post(client, "/v1/batches", first)
        assert status == 200
        resealed = open_envelope(again, MessageType.ACK)
        assert resealed.key_id == new.key_id  # an edge past its overlap window can still read it
        assert resealed.body == open_envelope(first_ack, MessageType.ACK).body
        assert open_ack(again, new.public).batch_hash == first_hash
        data, _ = store.batch([k.earn(cid, "s2", 5)])
        status, raw = await kk.post(client, "/v1/batches", data)
        assert status == 200 and open_ack(raw, new.public).results[0].points == 5
        health = await (await client.get("/healthz")).json()
        assert health["key_id"] == new.key_id

    stranger = create_key(tmp_path / "stranger.key")
    with pytest.raises(ConfigError, match="not one of this ledger's keys"):
        async with kk.cloud_app(data_dir, stranger, backend, clock):
            pass
