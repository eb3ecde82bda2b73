"""The cloud's HTTP contract, end to end: a real aiohttp server on 127.0.0.1,
a real ledger (SQLite file, then a PostgreSQL schema), real Ed25519 signatures."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.api import MAX_BATCH_BYTES
from cloud.worker import Worker
from protocol import (
    GENESIS_HASH,
    Ack,
    Balance,
    Batch,
    MessageType,
    OpStatus,
    ProtocolError,
    encode_ack,
    encode_batch,
    open_ack,
    open_downlink,
    seal,
)

from . import cloudkit as k

APPLIED, REFUSED = OpStatus.APPLIED, OpStatus.REFUSED


@pytest.fixture
async def cloud_env(tmp_path: Any, backend: k.Backend) -> AsyncIterator[k.Cloud]:
    async with k.running_cloud(tmp_path, backend) as cloud:
        yield cloud


def results(ack: Ack) -> list[tuple[OpStatus, str | None, int]]:
    return [(r.status, r.code, r.points) for r in ack.results]


async def refused(cloud: k.Cloud, path: str, data: bytes, status: int, code: str) -> dict[str, Any]:
    """Post, expect the JSON error, and prove the ledger did not change."""
    before = await cloud.snapshot()
    got_status, error = await cloud.post_json_error(path, data)
    assert (got_status, error["code"]) == (status, code), error
    assert isinstance(error["message"], str) and error["message"]
    assert await cloud.snapshot() == before
    return error


async def test_health_and_public_key(cloud_env: k.Cloud) -> None:
    resp = await cloud_env.client.get("/healthz")
    assert resp.status == 200 and (await resp.json())["status"] == "ok"
    resp = await cloud_env.client.get("/v1/public-key")
    assert await resp.json() == {"key_id": cloud_env.key.key_id, "public_key": cloud_env.key.public_hex}


async def test_happy_path_balances_and_ack(cloud_env: k.Cloud) -> None:
    store = cloud_env.stores["store-a"]
    cid = k.any_uuid()
    ops = [k.enroll(cid), k.earn(cid, "s1", 120), k.redeem(cid, "s2", 20), k.void(cid, "s1", 120, 0),
           k.adjust(cid, 45), k.update(cid, name="Ada L.", email="ada@example.org")]
    data, batch_hash = store.batch(ops)
    status, raw = await cloud_env.post("/v1/batches", data)
    assert status == 200
    ack = open_ack(raw, cloud_env.key.public)
    assert (ack.store_id, ack.seq, ack.batch_hash) == ("store-a", 1, batch_hash)
    # The void takes back 120 of a balance of 100: the program's default refund policy clamps at zero.
    assert results(ack) == [(APPLIED, None, 0), (APPLIED, None, 120), (APPLIED, None, -20),
                            (APPLIED, None, -100), (APPLIED, None, 45), (APPLIED, None, 0)]
    assert [r.op_id for r in ack.results] == [op.op_id for op in ops]
    (balance,) = ack.balances
    assert (balance.customer_id, balance.points) == (cid, 45)
    assert await cloud_env.balances() == {cid: 45}
    assert await cloud_env.storage.audit_balances() == []
    assert [(s.kind, s.points, s.policy) for s in await cloud_env.storage.list_shortfalls()] == [
        ("void", 20, "clamp")
    ]

    store.advance(batch_hash)
    ack2, _ = await cloud_env.send(store, [k.earn(cid, "s3", 5)])
    assert ack2.seq == 2 and ack2.balances == (Balance(cid, 50, balance.version + 1),)
    downlink, _ = await cloud_env.pull(store)
    (record,) = downlink.customers
    assert (record.name, record.email, record.balance, record.version) == ("Ada L.", "ada@example.org", 50,
                                                                           balance.version + 1)


async def test_resent_batch_returns_byte_identical_ack_and_applies_nothing(cloud_env: k.Cloud) -> None:
    store = cloud_env.stores["store-a"]
    cid = k.any_uuid()
    data, batch_hash = store.batch([k.enroll(cid), k.earn(cid, "s1", 10)])
    status, first = await cloud_env.post("/v1/batches", data)
    assert status == 200
    store.advance(batch_hash)
    await cloud_env.send(store, [k.earn(cid, "s2", 1)])  # the resend is now seq <= last
    before = await cloud_env.snapshot()
    for _ in range(2):
        status, again = await cloud_env.post("/v1/batches", data)
        assert status == 200 and again == first
    assert await cloud_env.snapshot() == before
    assert await cloud_env.balances() == {cid: 11}


async def test_op_resent_in_a_later_batch_keeps_its_first_result(cloud_env: k.Cloud) -> None:
    store = cloud_env.stores["store-a"]
    cid = k.any_uuid()
    enroll, earn = k.enroll(cid), k.earn(cid, "s1", 10)
    await cloud_env.send(store, [enroll, earn])
    ack, _ = await cloud_env.send(store, [earn, enroll, k.earn(cid, "s2", 3)])
    assert results(ack) == [(APPLIED, None, 10), (APPLIED, None, 0), (APPLIED, None, 3)]
    assert await cloud_env.balances() == {cid: 13}


async def test_same_op_id_with_other_content_is_refused(cloud_env: k.Cloud) -> None:
    store = cloud_env.stores["store-a"]
    cid = k.any_uuid()
    earn = k.earn(cid, "s1", 10)
    await cloud_env.send(store, [k.enroll(cid), earn])
    forged = k.earn(cid, "s1", 9999, op_id=earn.op_id)
    ack, _ = await cloud_env.send(store, [forged, k.earn(cid, "s2", 1)])
    assert results(ack) == [(REFUSED, "op_id_conflict", 0), (APPLIED, None, 1)]
    assert await cloud_env.balances() == {cid: 11}
    assert await cloud_env.storage.audit_balances() == []


async def test_redemption_above_balance_is_refused_recorded_and_the_rest_applies(cloud_env: k.Cloud) -> None:
    store = cloud_env.stores["store-a"]
    cid = k.any_uuid()
    too_much = k.redeem(cid, "s2", 51)
    ack, _ = await cloud_env.send(store, [k.enroll(cid), k.earn(cid, "s1", 50), too_much,
                                          k.redeem(cid, "s3", 50), k.earn(cid, "s4", 7)])
    assert results(ack) == [(APPLIED, None, 0), (APPLIED, None, 50), (REFUSED, "insufficient_balance", 0),
                            (APPLIED, None, -50), (APPLIED, None, 7)]
    assert ack.balances[0].points == 7
    (conflict,) = await cloud_env.storage.list_conflicts("store-a")
    assert (conflict.op_id, conflict.customer_id, conflict.points_requested, conflict.balance_available) == (
        too_much.op_id, cid, 51, 50)
    assert conflict.terminal_id == too_much.terminal_id and conflict.at == too_much.at
    assert await cloud_env.storage.list_conflicts("store-b") == []


async def test_two_stores_of_a_brand_cannot_spend_the_same_points(cloud_env: k.Cloud) -> None:
    a, b = cloud_env.stores["store-a"], cloud_env.stores["store-b"]
    cid = k.any_uuid()
    await cloud_env.send(a, [k.enroll(cid), k.earn(cid, "sale-1", 100)])
    downlink, _ = await cloud_env.pull(b)  # b learns the customer from the shared brand pool
    assert [(c.customer_id, c.balance) for c in downlink.customers] == [(cid, 100)]
    # both stores were offline and each spent 80 of the same 100 points
    spend_b = k.redeem(cid, "sale-b", 80)
    spend_a = k.redeem(cid, "sale-a", 80)
    ack_b, _ = await cloud_env.send(b, [spend_b])
    ack_a, _ = await cloud_env.send(a, [spend_a])
    assert results(ack_b) == [(APPLIED, None, -80)]
    assert results(ack_a) == [(REFUSED, "insufficient_balance", 0)]
    assert ack_a.balances[0].points == 20
    assert [c.op_id for c in await cloud_env.storage.list_conflicts()] == [spend_a.op_id]


async def test_a_store_of_another_brand_sees_no_customer(cloud_env: k.Cloud) -> None:
    a, z = cloud_env.stores["store-a"], cloud_env.stores["store-z"]
    cid = k.any_uuid()
    await cloud_env.send(a, [k.enroll(cid), k.earn(cid, "s1", 10)])
    ack, _ = await cloud_env.send(z, [k.redeem(cid, "s1", 5), k.enroll(cid)])
    assert results(ack) == [(REFUSED, "unknown_customer", 0), (REFUSED, "customer_exists", 0)]
    assert ack.balances == ()
    downlink, _ = await cloud_env.pull(z)
    assert downlink.customers == () and downlink.program is None


async def test_concurrent_batches_from_two_stores_both_apply(cloud_env: k.Cloud) -> None:
    a, b = cloud_env.stores["store-a"], cloud_env.stores["store-b"]
    ca, cb = k.any_uuid(), k.any_uuid()
    (ack_a, _), (ack_b, _) = await asyncio.gather(
        cloud_env.send(a, [k.enroll(ca), k.earn(ca, "s", 5)]), cloud_env.send(b, [k.enroll(cb), k.adjust(cb, 3)])
    )
    assert ack_a.balances[0].points == 5 and ack_b.balances[0].points == 3
    versions = sorted([ack_a.balances[0].version, ack_b.balances[0].version])
    assert versions in ([2, 4], [3, 4])  # one counter for the brand (both acme), each batch a contiguous run


# ---- sequence and chain


async def test_sequence_gap_says_what_is_expected(cloud_env: k.Cloud) -> None:
    store = cloud_env.stores["store-a"]
    await cloud_env.send(store, [k.enroll()])
    data, _ = store.batch([k.enroll()], seq=5)
    error = await refused(cloud_env, "/v1/batches", data, 409, "sequence_gap")
    assert error["expected"] == 2 and error["field"] == "seq"


async def test_old_seq_with_other_content_is_a_batch_conflict(cloud_env: k.Cloud) -> None:
    store = cloud_env.stores["store-a"]
    await cloud_env.send(store, [k.enroll()])
    data, _ = store.batch([k.enroll()], seq=1, prev_hash=GENESIS_HASH)
    await refused(cloud_env, "/v1/batches", data, 409, "batch_conflict")


async def test_wrong_prev_hash_breaks_the_chain(cloud_env: k.Cloud) -> None:
    store = cloud_env.stores["store-a"]
    await cloud_env.send(store, [k.enroll()])
    data, _ = store.batch([k.enroll()], prev_hash=bytes(range(32)))
    await refused(cloud_env, "/v1/batches", data, 409, "chain_broken")
    first, _ = k.StoreSigner("store-b", key=cloud_env.stores["store-b"].key).batch([k.enroll()],
                                                                                   prev_hash=b"\x01" * 32)
    await refused(cloud_env, "/v1/batches", first, 409, "chain_broken")


async def test_a_batch_not_applied_in_time_is_accepted_with_202_then_answered(tmp_path: Any,
                                                                               backend: k.Backend) -> None:
    """No reconciler in this process and none elsewhere yet: the batch is stored (once, however
    often it comes), every other batch is checked against it, and it is answered once applied."""
    async with k.running_cloud(tmp_path, backend, workers=0, ack_wait=0.05) as cloud:
        store = cloud.stores["store-a"]
        cid = k.any_uuid()
        data, batch_hash = store.batch([k.enroll(cid), k.earn(cid, "s1", 10)])
        (s1, e1), (s2, e2) = await asyncio.gather(cloud.post_json_error("/v1/batches", data),
                                                  cloud.post_json_error("/v1/batches", data))
        for status, error in ((s1, e1), (s2, e2)):
            assert (status, error["code"], error["field"]) == (202, "accepted", None)
            assert error["retry_after_ms"] > 0 and "batch 1 of store store-a" in error["message"]
        assert await cloud.storage.inbox_depth() == 1
        before = await cloud.snapshot()
        status, _ = await cloud.post_json_error("/v1/batches", data)
        assert status == 202 and await cloud.snapshot() == before
        other, _ = store.batch([k.enroll()])  # seq 1 again, other content
        await refused(cloud, "/v1/batches", other, 409, "batch_conflict")
        gap, _ = store.batch([k.enroll()], seq=3, prev_hash=batch_hash)
        assert (await refused(cloud, "/v1/batches", gap, 409, "sequence_gap"))["expected"] == 2
        broken, _ = store.batch([k.enroll()], seq=2, prev_hash=bytes(32))
        await refused(cloud, "/v1/batches", broken, 409, "chain_broken")
        assert await cloud.balances() == {}  # received is not applied

        assert await Worker(cloud.storage, cloud.key, cloud.clock).drain() == 1
        status, first = await cloud.post("/v1/batches", data)
        assert status == 200
        ack = open_ack(first, cloud.key.public)
        assert (ack.seq, ack.batch_hash, ack.balances[0].points) == (1, batch_hash, 10)
        assert await cloud.post("/v1/batches", data) == (200, first)
        assert await cloud.storage.inbox_depth() == 0 and await cloud.balances() == {cid: 10}
        store.advance(batch_hash)
        nxt, _ = store.batch([k.earn(cid, "s2", 5)])
        status, error = await cloud.post_json_error("/v1/batches", nxt)
        assert (status, error["code"]) == (202, "accepted")


# ---- authentication


def _tamper_body(data: bytes) -> bytes:
    version, type_, key_id, body, signature = msgpack.unpackb(data)
    assert b"Ada" in body
    return msgpack.packb([version, type_, key_id, body.replace(b"Ada", b"Eve"), signature])


async def test_tampered_body_or_signature_is_refused(cloud_env: k.Cloud) -> None:
    store = cloud_env.stores["store-a"]
    data, _ = store.batch([k.enroll(name="Ada")])
    await refused(cloud_env, "/v1/batches", _tamper_body(data), 401, "bad_signature")
    flipped = data[:-1] + bytes([data[-1] ^ 0x01])  # the last byte is the signature's
    await refused(cloud_env, "/v1/batches", flipped, 401, "bad_signature")
    status, _ = await cloud_env.post("/v1/batches", data)  # the genuine one still applies as seq 1
    assert status == 200


async def test_unknown_key(cloud_env: k.Cloud) -> None:
    stranger = k.StoreSigner("store-a")  # right store id, unregistered key
    data, _ = stranger.batch([k.enroll()])
    error = await refused(cloud_env, "/v1/batches", data, 401, "unknown_key")
    assert error["field"] == "key_id"


async def test_a_key_signing_for_another_store_is_foreign(cloud_env: k.Cloud) -> None:
    b = cloud_env.stores["store-b"]
    data, _ = b.batch([k.enroll()], store_id="store-a")
    await refused(cloud_env, "/v1/batches", data, 403, "foreign_key")
    # the body names another key than the envelope that carries it
    batch = Batch("store-b", b.node_id, cloud_env.stores["store-a"].key_id, 1, GENESIS_HASH, k.now_ms(),
                  (k.enroll(),))
    await refused(cloud_env, "/v1/batches", seal(MessageType.BATCH, encode_batch(batch), b.key, b.key_id),
                  403, "foreign_key")
    pull, _ = b.pull(store_id="store-a")
    await refused(cloud_env, "/v1/pull", pull, 403, "foreign_key")


async def test_revoked_key_is_refused(cloud_env: k.Cloud) -> None:
    store = cloud_env.stores["store-a"]
    await cloud_env.storage.revoke_key(store.key_id, k.now_ms())
    data, _ = store.batch([k.enroll()])
    await refused(cloud_env, "/v1/batches", data, 403, "key_revoked")
    pull, _ = store.pull()
    await refused(cloud_env, "/v1/pull", pull, 403, "key_revoked")
    # a new key for the store keeps the store's chain
    new_key = Ed25519PrivateKey.generate()
    replacement = k.StoreSigner("store-a", key=new_key)
    await cloud_env.storage.add_store_key("store-a", replacement.public_raw, k.now_ms())
    ack, _ = await cloud_env.send(replacement, [k.enroll()])
    assert ack.seq == 1


# ---- bounded, typed bodies


async def test_oversized_body_is_refused_before_reading(cloud_env: k.Cloud) -> None:
    before = await cloud_env.snapshot()
    big = io.BytesIO(b"\x00" * (MAX_BATCH_BYTES + 1))
    resp = await cloud_env.client.post("/v1/batches", data=big, headers={"Content-Type": "application/x-msgpack"})
    assert resp.request_info.headers["Content-Length"] == str(MAX_BATCH_BYTES + 1)
    error = (await resp.json())["error"]
    assert (resp.status, error["code"], error["limit"]) == (413, "too_large", MAX_BATCH_BYTES)
    assert await cloud_env.snapshot() == before


async def test_oversized_chunked_body_is_refused_while_reading(cloud_env: k.Cloud) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"\x00" * (1024 * 1024)

    before = await cloud_env.snapshot()
    resp = await cloud_env.client.post("/v1/batches", data=chunks(), headers={"Content-Type": "application/x-msgpack"})
    assert resp.status == 413 and (await resp.json())["error"]["code"] == "too_large"
    assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
    assert await cloud_env.snapshot() == before


async def test_oversized_pull_is_refused(cloud_env: k.Cloud) -> None:
    await refused(cloud_env, "/v1/pull", b"\x00" * 5000, 413, "too_large")


async def test_wrong_envelope_type_is_refused(cloud_env: k.Cloud) -> None:
    store = cloud_env.stores["store-a"]
    ack = Ack("store-a", 1, bytes(32), k.now_ms(), (), ())
    as_ack = seal(MessageType.ACK, encode_ack(ack), store.key, store.key_id)
    await refused(cloud_env, "/v1/batches", as_ack, 400, "wrong_type")
    batch, _ = store.batch([k.enroll()])
    assert len(batch) < 4096
    await refused(cloud_env, "/v1/pull", batch, 400, "wrong_type")
    pull, _ = store.pull()
    await refused(cloud_env, "/v1/batches", pull, 400, "wrong_type")


async def test_garbage_and_wrong_media_type(cloud_env: k.Cloud) -> None:
    await refused(cloud_env, "/v1/batches", b"\xc1not msgpack", 400, "bad_encoding")
    before = await cloud_env.snapshot()
    data, _ = cloud_env.stores["store-a"].batch([k.enroll()])
    resp = await cloud_env.client.post("/v1/batches", data=data, headers={"Content-Type": "application/json"})
    assert resp.status == 415 and (await resp.json())["error"]["code"] == "unsupported_media_type"
    assert await cloud_env.snapshot() == before


async def test_routing_errors_use_the_json_error_shape(cloud_env: k.Cloud) -> None:
    resp = await cloud_env.client.get("/v1/batches")
    assert resp.status == 405
    assert (await resp.json())["error"] == {"code": "method_not_allowed", "message": "Method Not Allowed",
                                            "field": None}
    resp = await cloud_env.client.get("/nope")
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"


async def test_storage_failure_is_a_503_in_the_json_shape(cloud_env: k.Cloud) -> None:
    await cloud_env.storage.close()
    data, _ = cloud_env.stores["store-a"].batch([k.enroll()])
    status, error = await cloud_env.post_json_error("/v1/batches", data)
    assert (status, error["code"]) == (503, "storage_unavailable")


# ---- pulls


async def test_pull_pages_customers_since_the_cursor(cloud_env: k.Cloud) -> None:
    a, b = cloud_env.stores["store-a"], cloud_env.stores["store-b"]
    ids = [k.any_uuid() for _ in range(5)]
    await cloud_env.send(a, [k.enroll(cid) for cid in ids])  # versions 1..5
    await cloud_env.send(a, [k.earn(ids[0], "s1", 9)])  # ids[0] moves to version 6

    data, nonce = b.pull(cursor=0, limit=2)
    status, raw = await cloud_env.post("/v1/pull", data)
    assert status == 200
    page = open_downlink(raw, cloud_env.key.public)
    assert page.nonce == nonce and page.store_id == "store-b"
    assert [c.customer_id for c in page.customers] == ids[1:3]
    assert (page.from_cursor, page.to_cursor, page.more) == (0, 3, True)
    assert page.program is not None and (page.program.brand_id, page.program.version) == ("acme", 1)

    page2, _ = await cloud_env.pull(b, cursor=page.to_cursor, limit=2)
    assert [c.customer_id for c in page2.customers] == ids[3:5]
    assert (page2.to_cursor, page2.more) == (5, True)
    page3, _ = await cloud_env.pull(b, cursor=page2.to_cursor, limit=2)
    assert [(c.customer_id, c.balance, c.version) for c in page3.customers] == [(ids[0], 9, 6)]
    assert (page3.to_cursor, page3.more) == (6, False)
    empty, _ = await cloud_env.pull(b, cursor=6)
    assert (empty.customers, empty.to_cursor, empty.more) == ((), 6, False)


async def test_each_brand_counts_its_own_changes(cloud_env: k.Cloud) -> None:
    a, z = cloud_env.stores["store-a"], cloud_env.stores["store-z"]
    await cloud_env.send(a, [k.enroll(), k.enroll()])
    page, _ = await cloud_env.pull(z, cursor=0)  # acme's changes are nothing to zeta's cursor
    assert (page.customers, page.to_cursor, page.more) == ((), 0, False)
    cid = k.any_uuid()
    ack, _ = await cloud_env.send(z, [k.enroll(cid), k.adjust(cid, 4)])
    assert ack.balances[0].version == 2  # zeta's counter: 1 and 2, whatever acme did
    page, _ = await cloud_env.pull(z, cursor=0)
    assert ([c.customer_id for c in page.customers], page.to_cursor) == ([cid], 2)


async def test_program_changes_reach_the_pull(cloud_env: k.Cloud) -> None:
    await cloud_env.storage.set_program("acme", "Double", 2, 100, k.now_ms())
    page, _ = await cloud_env.pull(cloud_env.stores["store-a"])
    assert page.program is not None and (page.program.version, page.program.points_per_unit) == (2, 2)


async def test_program_settings_reach_the_pull(cloud_env: k.Cloud) -> None:
    settings = '{"kind": "currency", "refund_policy": "negative", "expiry": {"mode": "inactivity", "months": 12}}'
    await cloud_env.storage.set_program("acme", "Dollars", 5, 100, k.now_ms(), settings)
    page, _ = await cloud_env.pull(cloud_env.stores["store-a"])
    assert page.program is not None
    options = page.program.options
    assert (options.kind.value, options.refund_policy.value, options.expiry.months) == ("currency", "negative", 12)


async def test_stale_or_future_pull_is_refused(cloud_env: k.Cloud) -> None:
    store = cloud_env.stores["store-a"]
    stale, _ = store.pull(at=k.now_ms() - 301_000)
    error = await refused(cloud_env, "/v1/pull", stale, 401, "stale_request")
    assert error["field"] == "at"
    future, _ = store.pull(at=k.now_ms() + 301_000)
    await refused(cloud_env, "/v1/pull", future, 401, "stale_request")
    cloud_env.clock.offset = 200_000  # within the window from the cloud's point of view
    ok, _ = store.pull(at=k.now_ms())
    status, _ = await cloud_env.post("/v1/pull", ok)
    assert status == 200


async def test_pull_signature_is_checked(cloud_env: k.Cloud) -> None:
    store = cloud_env.stores["store-a"]
    data, _ = store.pull()
    await refused(cloud_env, "/v1/pull", data[:-1] + bytes([data[-1] ^ 0x80]), 401, "bad_signature")


async def test_downlink_cannot_pass_for_an_ack(cloud_env: k.Cloud) -> None:
    data, _ = cloud_env.stores["store-a"].pull()
    status, raw = await cloud_env.post("/v1/pull", data)
    assert status == 200
    with pytest.raises(ProtocolError) as info:
        open_ack(raw, cloud_env.key.public)
    assert info.value.code == "wrong_type"
