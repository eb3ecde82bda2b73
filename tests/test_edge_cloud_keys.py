"""The cloud keys an edge trusts: the chain rules, and a cloud key rotation reaching an edge that was
offline while the cloud announced the new key and switched to it (a real cloud on 127.0.0.1, both
ledger backends, a real edge store and sync task)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.api import STORAGE
from cloud.cloud_keyring import rotate_cloud_key
from cloud.keys import create_key
from edge.cloud_trust import CloudTrust, TrustedKey, read_keys
from edge.health import judge
from edge.keyfile import load_key
from edge.outbox import Identity
from edge.store import EdgeStore
from edge.sync import SyncTask
from protocol import RemoteProtocolError, key_id_for, public_bytes, uuid7
from protocol.key_messages import seal_cloud_key

from . import cloudkit as k
from . import keykit as kk
from .edgekit import install_program, make_edge_config
from .linkkit import Link, LinkedEdge
from .processkit import free_port

T0 = 1_767_225_600_000
HOUR_MS = 3_600_000
K1, K2, K3, RIVAL = (Ed25519PrivateKey.generate() for _ in range(4))


def trusted(key: Ed25519PrivateKey, seq: int, version: int, overlap_ms: int = 0) -> TrustedKey:
    return TrustedKey(seq, key_id_for(key.public_key()), public_bytes(key.public_key()), version, overlap_ms, None)


def ids(trust: CloudTrust) -> list[tuple[str, int]]:
    return [(t.key_id, t.version) for t in trust.keys]


def test_a_chain_grows_only_from_its_newest_key() -> None:
    a2 = seal_cloud_key(2, K1, K2, HOUR_MS, T0)
    a3 = seal_cloud_key(3, K2, K3, HOUR_MS, T0)
    start = CloudTrust([trusted(K1, 1, 1)])
    half, adopted = start.extend([a3, a2])  # out of order: v3 does not extend v1 yet
    assert [a.key.version for a in adopted] == [2] and half.newest.version == 2
    full, adopted = start.extend([a2, a3])
    assert ids(full) == [(key_id_for(p.public_key()), v) for p, v in ((K1, 1), (K2, 2), (K3, 3))]
    assert [a.announcement for a in adopted] == [a2, a3]
    # an older or rival announcement never replaces a newer key, nor does a replayed one
    rival_v2 = seal_cloud_key(2, K1, RIVAL, HOUR_MS, T0)
    rival_v4 = seal_cloud_key(4, K2, RIVAL, HOUR_MS, T0)  # signed by a key that is no longer the newest
    assert full.extend([rival_v2, rival_v4, a2, a3])[1] == []
    assert half.extend([rival_v2])[1] == []
    # a pinned key (version unknown) takes any version; a newer pin does not go back to an older version
    assert CloudTrust([trusted(K1, 1, 0)]).extend([a2])[0].newest.version == 2
    assert CloudTrust([trusted(K1, 1, 5)]).extend([a2])[1] == []
    # a link signed by the newest key that does not hold is no honest cloud's: refused loudly
    tampered = bytearray(a2)
    tampered[-70] ^= 0x01  # inside the body: the envelope's signature fails
    with pytest.raises(RemoteProtocolError):
        start.extend([bytes(tampered)])


def test_older_keys_retire_once_a_newer_one_is_in_use() -> None:
    trust = CloudTrust([trusted(K1, 1, 1), trusted(K2, 2, 2, overlap_ms=1000)])
    k1, k2 = key_id_for(K1.public_key()), key_id_for(K2.public_key())
    assert trust.retirements(trust.keys[0], 50) == {}  # the old key in use retires nothing
    retire = trust.retirements(trust.keys[1], 100)
    assert retire == {k1: 1100}
    later = trust.retire(retire)
    assert later.key(k1, 1099).key_id == k1 and later.key(k2, 10**13).key_id == k2
    assert later.retirements(later.keys[1], 500) == {}  # the clock starts once
    with pytest.raises(RemoteProtocolError) as info:
        later.key(k1, 1100)
    assert info.value.code == "retired_cloud_key"
    with pytest.raises(RemoteProtocolError) as info:
        later.key(key_id_for(K3.public_key()), 0)
    assert info.value.code == "unknown_cloud_key" and info.value.status_hint == 401


async def test_cloud_key_rotation_reaches_an_edge_that_was_offline(tmp_path: Path, backend: k.Backend) -> None:
    cloud_clock = k.Clock()
    edge_offset = [0.0]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data = tmp_path / "cloud"
    data.mkdir(mode=0o700)
    v1 = create_key(data / "cloud.key")
    config = make_edge_config(tmp_path / "edge", store_id="store-e", cloud_url=url, cloud_key=public_bytes(v1.public))
    install_program(config)
    key = load_key(config.key_path)
    store = EdgeStore(config.db_path)
    await store.open()
    identity = Identity("store-e", store.meta("node_id"), key_id_for(key.public_key()), key)
    sync = SyncTask(store, Link(url, random.Random(1)), identity, v1.public,
                    clock=lambda: time.time() + edge_offset[0])
    edge = LinkedEdge("store-e", store, sync, sync.client, terminal_id=uuid7(k.now_ms()))  # type: ignore[arg-type]
    try:
        async with kk.cloud_app(data, v1, backend, cloud_clock, port) as client:
            storage = client.server.app[STORAGE]
            await storage.add_brand(k.BRAND, "Acme Coffee", cloud_clock())
            await storage.set_program(k.BRAND, "Acme Rewards", 1, 100, cloud_clock())
            await storage.add_store("store-e", k.BRAND, public_bytes(key.public_key()), cloud_clock())
            customer = await edge.enroll("Ada", "+33600000001")
            await edge.sync_until_drained()
            # the operator rotates the cloud key; this edge is offline from now on
            v2 = create_key(data / "cloud.key.new")
            record = await rotate_cloud_key(storage, v1, v2, HOUR_MS, cloud_clock())

        await edge.earn(customer, "s1", 500)  # written while the cloud was away
        async with kk.cloud_app(data, v2, backend, cloud_clock, port):  # back, and switched to the new key
            await edge.sync_until_drained()
            assert edge.balance(customer)["confirmed"] == 5
            trusted_keys = store.read(read_keys)
            assert [(t.key_id, t.version) for t in trusted_keys] == [(v1.key_id, 0), (v2.key_id, 2)]
            old_retires = trusted_keys[0].retire_at
            assert old_retires is not None and 0 < old_retires - k.now_ms() <= HOUR_MS
            assert (sync.status.cloud_key_id, sync.status.cloud_key_version) == (v2.key_id, 2)
            assert store.read(lambda c: c.execute("SELECT announcement FROM cloud_keys WHERE version = 2")
                              .fetchone()[0]) == record.announcement
            assert sync.keeper is not None
            rival = seal_cloud_key(2, v1.private, Ed25519PrivateKey.generate(), 0, cloud_clock())
            assert await sync.keeper.adopt([rival, record.announcement]) == []

        await edge.earn(customer, "s2", 300)
        async with kk.cloud_app(data, v1, backend, cloud_clock, port):  # a process not restarted yet
            await edge.sync_until_drained()  # within the overlap its acks still verify
            assert edge.balance(customer)["confirmed"] == 8
            edge_offset[0] = cloud_clock.offset / 1000 + 3601  # an hour later on both sides
            cloud_clock.offset = 3601 * 1000
            await edge.earn(customer, "s3", 100)
            await sync.attempt_once()
            assert sync.status.refused is not None and "cannot trust the cloud" in sync.status.refused
            verdict = judge({"program_version": 1, "outbox": {}, "sync": {"refused": sync.status.refused,
                                                                           "last_error": sync.status.last_error}},
                            time.time())
            assert verdict.status == "failing" and "stopped accepting" in verdict.reasons[0]
            assert edge.unacked() == 1  # refused answers apply nothing; the op waits

        async with kk.cloud_app(data, v2, backend, cloud_clock, port):
            # a restarted node still knows the chain it learned (stored with its versions)
            again = SyncTask(store, sync.client, identity, v1.public, clock=sync.clock)
            await again.attempt_once()
            assert again.status.refused is None and again.status.cloud_key_version == 2
            assert store.read(lambda c: c.execute("SELECT COUNT(*) FROM outbox WHERE status IS NULL")
                              .fetchone()[0]) == 0
    finally:
        await store.close()
        await sync.client.close()  # type: ignore[attr-defined]
