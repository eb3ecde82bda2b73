"""Duplicate profiles end to end, on both ledger backends: two stores give one card code (or
phone) to two new profiles offline; after sync there is one profile whose balance is the sum,
every edge folds the duplicate into it, the old id and the card still find it, an op queued for
the old id lands on the survivor, and the combined points can be spent once."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloud.merges import MergeRecord
from edge import writes
from edge.errors import Unprocessable
from protocol import Consent, Enroll, OpStatus, uuid7

from . import cloudkit
from .bothkit import Both, edge_and_cloud
from .linkkit import LinkedEdge, linked_edge


@pytest.fixture
async def cloud(tmp_path: Path, backend: cloudkit.Backend) -> AsyncIterator[cloudkit.Cloud]:
    async with cloudkit.running_cloud(tmp_path, backend) as running:
        yield running


async def merges_done(cloud: cloudkit.Cloud, count: int) -> list[MergeRecord]:
    """The brand's merges once there are ``count`` (made right after the colliding batch commits)."""
    deadline = time.monotonic() + 10
    while len(merges := await cloud.storage.list_merges(cloudkit.BRAND)) < count:
        assert time.monotonic() < deadline, f"{len(merges)} merges, not {count}"
        await asyncio.sleep(0.02)
    return merges


async def enroll(edge: LinkedEdge, name: str, *, phone: str | None = None, card: str | None = None) -> str:
    now = edge.now()
    op = Enroll(op_id=uuid7(now), at=now, terminal_id=edge.terminal_id, customer_id=uuid7(now), name=name,
                phone=phone, email=None, card_code=card, consent=Consent(True, (), "pos", None, now))
    status, body = await edge._write(op.op_id, writes.enroll(op))
    assert status == 201, body
    return op.customer_id


def found(edge: LinkedEdge, by: str, value: str) -> list[tuple[str, int]]:
    return [(c["customer_id"], c["balance"]["confirmed"]) for c in edge.store.find(by, value, 50)]


@pytest.mark.parametrize("reason", ["card_code", "phone"])
async def test_two_offline_edges_enroll_one_card_and_converge_on_one_profile(
    tmp_path: Path, cloud: cloudkit.Cloud, reason: str
) -> None:
    a = await linked_edge(tmp_path, cloud, "store-x", 21)
    b = await linked_edge(tmp_path, cloud, "store-y", 22)
    shared = {"card": "CARD-77"} if reason == "card_code" else {"phone": "+15145550177"}
    try:
        a.link.up = b.link.up = False  # both stores offline: neither knows of the other's profile
        older = await enroll(a, "Ana", **({"phone": "+15145550100"} if reason == "card_code" else {}), **shared)
        await asyncio.sleep(0.005)
        newer = await enroll(b, "Ana L.", **({"phone": "+15145550199"} if reason == "card_code" else {}), **shared)
        assert (await a.earn(older, "sale-a", 10_000))[0] == 201  # 100 points
        assert (await b.earn(newer, "sale-b", 3_000))[0] == 201  # 30 points
        a.link.heal()
        b.link.heal()
        await a.sync_until_drained()
        await b.sync.push()  # b's batch lands; the cloud merges its profile into a's, the older
        (merge,) = await merges_done(cloud, 1)
        assert (merge.survivor_id, merge.duplicate_id, merge.reason) == (older, newer, reason)
        assert (merge.survivor_balance_before, merge.duplicate_balance_before) == (100, 30)
        # An earn b queued for the old id before it hears of the merge.
        assert (await b.earn(newer, "sale-b2", 2_000))[0] == 201
        await b.sync.pull()  # b folds the duplicate: its pending earn now counts for the survivor
        assert b.balance(older) == {"confirmed": 130, "pending": 20, "available": 130}
        await b.sync_until_drained()
        await a.sync_until_drained()

        # One profile, the sum, on both edges and in the cloud; both histories kept.
        assert await cloud.balances() == {older: 150, newer: 0}
        for edge in (a, b):
            assert edge.store.customer(newer)["customer_id"] == older  # the old id still works
            assert edge.balance(older) == {"confirmed": 150, "pending": 0, "available": 150}
            by, value = ("code", "CARD-77") if reason == "card_code" else ("phone", "+15145550177")
            assert found(edge, by, value) == [(older, 150)]
        if reason == "card_code":  # the tombstone kept its own phone: that finds the customer too
            assert found(a, "phone", "+15145550199") == [(older, 150)]
        newer_entries = [(e.kind, e.points) for e in await cloud.storage.customer_entries(newer)]
        older_entries = [(e.kind, e.points) for e in await cloud.storage.customer_entries(older)]
        assert sorted(newer_entries) == [("earn", 30), ("merge_out", -30)]
        assert sorted(older_entries) == [("earn", 20), ("earn", 100), ("merge_in", 30)]
        assert await cloud.storage.audit_balances() == []

        # The combined balance is spent once: a redemption above it is refused at the edge,
        # and two stores spending it offline get one refusal in the cloud.
        with pytest.raises(Unprocessable):
            await a.redeem(a.store.resolve(newer), "sale-a2", 151)
        a.link.up = b.link.up = False
        assert (await a.redeem(a.store.resolve(newer), "sale-a3", 150))[0] == 201
        assert (await b.redeem(b.store.resolve(newer), "sale-b3", 150))[0] == 201
        a.link.heal()
        b.link.heal()
        await a.sync_until_drained()
        await b.sync_until_drained()
        await a.sync_until_drained()
        assert await cloud.balances() == {older: 0, newer: 0}
        assert [c["code"] for c in b.store.conflicts()] == ["insufficient_balance"]
        assert a.balance(older) == b.balance(older) == {"confirmed": 0, "pending": 0, "available": 0}
        # A second run of the merge finds nothing to do.
        assert (await cloud.storage.merge_duplicates(cloudkit.now_ms())).merged == 0
    finally:
        await a.close()
        await b.close()


@pytest.fixture
async def both(tmp_path: Path, backend: cloudkit.Backend) -> AsyncIterator[Both]:
    async with edge_and_cloud(tmp_path, backend) as running:
        yield running


async def test_a_terminal_keeps_using_the_old_id_and_the_card_after_a_merge(both: Both) -> None:
    status, survivor = await both.call("POST", "/v1/customers", {
        "name": "Bea", "phone": "+15145550142", "card_code": "CARD-42", "consent": {"terms_accepted": True}})
    assert status == 201, survivor
    older = survivor["customer_id"]
    assert (await both.call("POST", "/v1/earns", {"customer_id": older, "sale_id": "e-1", "amount": 10_000,
                                                  "state": "paid"}))[0] == 201
    await both.settle()
    # Another store, offline until now, gave the same card to a new profile with 30 points.
    newer = cloudkit.any_uuid()
    other = dataclasses.replace(cloudkit.enroll(newer, name="Bea N.", phone="+15145550143"), card_code="CARD-42")
    ack, _ = await both.cloud.send(both.cloud.stores["store-b"], [other, cloudkit.earn(newer, "n-1", 30)])
    assert all(r.status is OpStatus.APPLIED for r in ack.results)
    await merges_done(both.cloud, 1)
    await both.settle()

    # The old id, the card and the duplicate's own phone all give the survivor, with the sum.
    merged = await both.customer(newer)
    assert (merged["customer_id"], merged["balance"]["confirmed"]) == (older, 130)
    for query in ("code=CARD-42", "phone=%2B15145550143", "phone=%2B15145550142"):
        status, data = await both.call("GET", f"/v1/customers?{query}")
        assert status == 200 and [c["customer_id"] for c in data["customers"]] == [older], (query, data)
    # A profile change through the old id changes the survivor.
    status, data = await both.call("PATCH", f"/v1/customers/{newer}", {"email": "bea@example.org"})
    assert (status, data["customer_id"], data["email"]) == (200, older, "bea@example.org")
    # The card cannot be given to a third profile here either.
    status, data = await both.call("POST", "/v1/customers", {
        "name": "Bo", "card_code": "CARD-42", "consent": {"terms_accepted": True}})
    assert (status, data["error"]["code"]) == (409, "card_code_taken")

    # A receipt claimed at the till for the old id earns for the survivor.
    status, receipt = await both.call("POST", "/v1/earns", {"sale": {
        "sale_id": "u-1", "state": "paid", "tenders": [{"kind": "cash", "amount": 1_000}],
        "lines": [{"line_id": "1", "sku": "tea", "quantity": 1, "unit_price": 1_000}]}})
    assert status == 201 and receipt["customer_id"] is None, receipt
    status, claimed = await both.call("POST", "/v1/claims", {"code": receipt["claim"]["code"], "customer_id": newer})
    assert (status, claimed["customer_id"]) == (201, older), claimed
    await both.settle()
    assert (await both.customer(older))["balance"]["confirmed"] == 130 + claimed["points"] > 130
    status, data = await both.call("POST", "/v1/adjustments", {
        "customer_id": older, "points": -claimed["points"], "reason": "test", "actor": "t"})
    assert status == 201, data
    await both.settle()

    # Spending through the old id: above the combined balance is refused, the whole of it is not.
    status, data = await both.call("POST", "/v1/redemptions", {"customer_id": newer, "sale_id": "r-1", "points": 131})
    assert (status, data["error"]["code"]) == (422, "insufficient_balance")
    status, data = await both.call("POST", "/v1/redemptions", {"customer_id": newer, "sale_id": "r-2", "points": 130})
    assert status == 201, data
    assert data["customer_id"] == older
    await both.settle()
    assert await both.cloud_balance(older) == 0
    assert await both.cloud_balance(newer) == 0
    assert (await both.customer(older))["balance"] == {"confirmed": 0, "pending": 0, "available": 0}
