"""Duplicate profiles in the cloud, on both ledger backends: two stores give one card code (or
phone) to two new profiles; the cloud merges the newer into the older right after the batch
(and in the periodic job), moves the points with both histories kept, audits the merge, sends
it down as a tombstone, and redirects later ops to the survivor."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cloud.config import DataDir
from cloud.merges import MergeRecord
from cloud.model import CLOUD_ORIGIN
from cloud.periodic import run_periodic
from protocol import Ack, Balance, Consent, Enroll, Op, OpStatus

from . import cloudkit as k
from . import test_cloud_pg_concurrency as concurrency
from .test_cloud_balance_ops import ms
from .test_cloud_pg_concurrency import Ledger

ledger = concurrency.ledger  # two reconcilers with pools of their own, on PostgreSQL


@pytest.fixture
async def cloud(tmp_path: Path, backend: k.Backend) -> AsyncIterator[k.Cloud]:
    async with k.running_cloud(tmp_path, backend) as cloud:
        yield cloud


def enroll(cid: str, *, card: str | None = None, phone: str | None = None, age_ms: int = 0,
           email: str | None = None) -> Enroll:
    if phone is None and card is None and email is None:
        email = f"{cid}@example.com"  # a profile needs one way to find it
    when = k.now_ms() - age_ms
    return Enroll(op_id=k.new_id(), at=when, terminal_id=k.TERMINAL, customer_id=cid, name=f"C {cid[:4]}",
                  phone=phone, email=email, card_code=card, consent=Consent(True, (), "pos", None, when))


def at(op: Op, when: int) -> Op:
    return dataclasses.replace(op, at=when)


async def rows(cloud: k.Cloud, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await cloud.backend.rows(cloud.db_path, sql)]


async def merges_done(cloud: k.Cloud, count: int, brand: str = k.BRAND) -> list[MergeRecord]:
    """The brand's merges once there are ``count``: the worker merges right after the batch commits,
    and a POST may be answered (from the ledger) just before that."""
    deadline = time.monotonic() + 10
    while len(merges := await cloud.storage.list_merges(brand)) < count:
        assert time.monotonic() < deadline, f"{len(merges)} merges, not {count}"
        await asyncio.sleep(0.02)
    return merges


async def two_profiles_one_card(cloud: k.Cloud) -> tuple[str, str]:
    """Store a enrolled the older profile (100 points), store b the newer (30), both with CARD-1."""
    older, newer = k.any_uuid(), k.any_uuid()
    await cloud.send(cloud.stores["store-a"], [enroll(older, card="CARD-1", phone="+33611111111", age_ms=60_000),
                                               k.earn(older, "sale-a", 100)])
    ack, _ = await cloud.send(cloud.stores["store-b"], [enroll(newer, card="CARD-1", phone="+33622222222"),
                                                        k.earn(newer, "sale-b", 30)])
    # The ack was sealed before the merge: it answers the batch as applied.
    assert ack.balances == (Balance(newer, 30, ack.balances[0].version),)
    await merges_done(cloud, 1)
    return older, newer


async def test_two_stores_one_card_code_merge_into_the_older_profile(cloud: k.Cloud) -> None:
    older, newer = await two_profiles_one_card(cloud)
    # Merged as soon as the batch that made the collision was applied.
    assert await cloud.balances() == {older: 130, newer: 0}
    customers = await rows(cloud, f"SELECT customer_id, card_code, phone, merged_into FROM customers"
                                  f" WHERE customer_id IN ('{older}', '{newer}') ORDER BY created_at")
    # The survivor keeps its card and phone; the tombstone keeps only what differs (its own phone).
    assert customers == [(older, "CARD-1", "+33611111111", None), (newer, None, "+33622222222", older)]

    (merge,) = await cloud.storage.list_merges(k.BRAND)
    assert (merge.survivor_id, merge.duplicate_id, merge.reason) == (older, newer, "card_code")
    assert (merge.survivor_balance_before, merge.duplicate_balance_before) == (100, 30)
    assert merge.actor == "batch store-b/1"

    # Both histories stay where they were; the points moved by entries of their own, under the merge's id.
    entries = await rows(cloud, "SELECT customer_id, op_id, store_id, kind, points FROM ledger_entries ORDER BY id")
    assert [(e[0], e[3], e[4]) for e in entries] == [
        (older, "earn", 100), (newer, "earn", 30), (newer, "merge_out", -30), (older, "merge_in", 30)]
    assert {(e[1], e[2]) for e in entries[2:]} == {(merge.merge_id, CLOUD_ORIGIN)}
    assert await cloud.storage.audit_balances() == []

    # Every edge of the brand learns it: the tombstone first, then the survivor with the sum.
    page, _ = await cloud.pull(cloud.stores["store-a"])
    by_id = {c.customer_id: c for c in page.customers}
    assert (by_id[newer].merged_into, by_id[newer].balance, by_id[newer].card_code) == (older, 0, None)
    assert (by_id[older].merged_into, by_id[older].balance, by_id[older].card_code) == (None, 130, "CARD-1")
    assert by_id[newer].version < by_id[older].version

    # Idempotent: nothing collides any more.
    before = await cloud.snapshot()
    again = await cloud.storage.merge_duplicates(k.now_ms())
    assert (again.collisions, again.merged) == (0, 0)
    assert await cloud.snapshot() == before
    assert len(await cloud.storage.list_merges(k.BRAND)) == 1


async def test_ops_addressed_to_the_merged_id_land_on_the_survivor(cloud: k.Cloud) -> None:
    older, newer = await two_profiles_one_card(cloud)
    store_b = cloud.stores["store-b"]
    # Store b has not pulled yet: it still earns on the old id.
    ack, _ = await cloud.send(store_b, [k.earn(newer, "sale-b2", 20)])
    assert ack.results[0].status is OpStatus.APPLIED
    # The balance the ack gives is the survivor's: the combined one.
    assert [(b.customer_id, b.points) for b in ack.balances] == [(older, 150)]
    # A void of the sale earned on the old id before the merge, sent under the survivor's id.
    ack, _ = await cloud.send(store_b, [k.void(older, "sale-b", 30, 0)])
    assert [(r.status, r.code, r.points) for r in ack.results] == [(OpStatus.APPLIED, None, -30)]
    # The combined balance can be spent through the old id, once.
    ack, _ = await cloud.send(store_b, [k.redeem(newer, "sale-b3", 120)])
    assert [(r.status, r.points) for r in ack.results] == [(OpStatus.APPLIED, -120)]
    # A redemption above the combined balance is refused, whichever id it names: no point is spent twice.
    ack, _ = await cloud.send(store_b, [k.redeem(newer, "sale-b4", 1), k.redeem(older, "sale-b5", 1)])
    assert [(r.status, r.code) for r in ack.results] == [(OpStatus.REFUSED, "insufficient_balance")] * 2
    ack, _ = await cloud.send(store_b, [k.void(newer, "sale-b3", 0, 120)])
    assert [(r.status, r.points) for r in ack.results] == [(OpStatus.APPLIED, 120)]
    assert await cloud.balances() == {older: 120, newer: 0}

    # The ops keep the id they named (traceable); every entry after the merge is the survivor's.
    entries = await rows(cloud, "SELECT customer_id, kind, points FROM ledger_entries WHERE store_id = 'store-b'"
                                " ORDER BY id")
    assert entries == [(newer, "earn", 30), (older, "earn", 20), (older, "void_earn", -30),
                       (older, "redeem", -120), (older, "void_redeem", 120)]
    ops = await rows(cloud, "SELECT customer_id, COUNT(*) FROM ops WHERE store_id = 'store-b' GROUP BY customer_id")
    assert dict(ops) == {newer: 6, older: 2}
    # An operator's adjustment of the old id goes to the survivor too: a tombstone stays at 0.
    record = await cloud.storage.adjust_balance(k.BRAND, newer, 5, "goodwill", "Maria", k.now_ms())
    assert (record.customer_id, record.balance_after) == (older, 125)
    assert await cloud.balances() == {older: 125, newer: 0}
    assert await cloud.storage.audit_balances() == []


async def test_the_same_phone_merges_and_the_survivor_takes_the_card(cloud: k.Cloud) -> None:
    older, newer = k.any_uuid(), k.any_uuid()
    await cloud.send(cloud.stores["store-a"], [enroll(older, phone="+33633333333", age_ms=5_000)])
    await cloud.send(cloud.stores["store-b"], [enroll(newer, phone="+33633333333", card="CARD-9",
                                                      email="eve@example.com"), k.earn(newer, "s-1", 40)])
    await merges_done(cloud, 1)
    assert await cloud.balances() == {older: 40, newer: 0}
    customers = await rows(cloud, f"SELECT customer_id, phone, card_code, email, merged_into FROM customers"
                                  f" WHERE customer_id IN ('{older}', '{newer}') ORDER BY created_at")
    assert customers == [(older, "+33633333333", "CARD-9", "eve@example.com", None), (newer, None, None, None, older)]
    (merge,) = await cloud.storage.list_merges(k.BRAND)
    assert (merge.survivor_id, merge.duplicate_id, merge.reason) == (older, newer, "phone")


async def test_a_card_assigned_to_an_existing_profile_that_another_holds(cloud: k.Cloud) -> None:
    """The survivor is the older profile even when the newer one had the card first."""
    older, newer = k.any_uuid(), k.any_uuid()
    await cloud.send(cloud.stores["store-a"], [enroll(older, age_ms=60_000), k.earn(older, "s-1", 10)])
    await cloud.send(cloud.stores["store-b"], [enroll(newer, card="CARD-7"), k.earn(newer, "s-2", 5)])
    assert await cloud.storage.list_merges(k.BRAND) == []
    await cloud.send(cloud.stores["store-a"], [k.update(older, card_code="CARD-7")])
    (merge,) = await merges_done(cloud, 1)
    assert (merge.survivor_id, merge.duplicate_id, merge.reason) == (older, newer, "card_code")
    assert await cloud.balances() == {older: 15, newer: 0}


async def test_other_brands_and_tombstones_never_collide(cloud: k.Cloud) -> None:
    acme, zeta = k.any_uuid(), k.any_uuid()
    await cloud.send(cloud.stores["store-a"], [enroll(acme, card="CARD-1")])
    await cloud.send(cloud.stores["store-z"], [enroll(zeta, card="CARD-1")])
    assert await cloud.storage.list_merges(k.BRAND) == []
    assert await cloud.storage.list_merges(k.OTHER_BRAND) == []
    # Three profiles, one card: both newer ones fold into the oldest, each once.
    second, third = k.any_uuid(), k.any_uuid()
    await cloud.send(cloud.stores["store-b"], [enroll(second, card="CARD-1"), enroll(third, card="CARD-1")])
    merges = await merges_done(cloud, 2)
    assert sorted((m.survivor_id, m.duplicate_id) for m in merges) == sorted([(acme, second), (acme, third)])


async def test_the_periodic_job_merges_what_the_batch_path_missed(cloud: k.Cloud) -> None:
    older, newer = k.any_uuid(), k.any_uuid()
    await cloud.send(cloud.stores["store-a"], [enroll(older, age_ms=1_000), k.earn(older, "s-1", 7)])
    await cloud.send(cloud.stores["store-b"], [enroll(newer), k.earn(newer, "s-2", 8)])
    # A collision made behind the batch path's back (e.g. a merge that failed after its batch).
    await cloud.execute(f"UPDATE customers SET card_code = 'CARD-5' WHERE customer_id IN ('{older}', '{newer}')")
    results = {r.step: r for r in await run_periodic(cloud.storage, k.now_ms())}
    step = results["merge_duplicates"]
    assert step.ok and (step.detail["collisions"], step.detail["merged"]) == (1, 1)
    assert step.detail["merges"][0]["duplicate_id"] == newer
    assert results["audit_balances"].ok
    assert await cloud.balances() == {older: 15, newer: 0}
    (merge,) = await cloud.storage.list_merges(k.BRAND)
    assert merge.actor == "periodic"
    again = {r.step: r for r in await run_periodic(cloud.storage, k.now_ms())}
    assert (again["merge_duplicates"].detail["merged"], len(await cloud.storage.list_merges(k.BRAND))) == (0, 1)


async def test_concurrent_runs_merge_once(cloud: k.Cloud) -> None:
    ids = [k.any_uuid() for _ in range(4)]
    await cloud.send(cloud.stores["store-a"], [enroll(cid, age_ms=1000 * n) for n, cid in enumerate(ids)])
    await cloud.execute("UPDATE customers SET phone = '+33644444444'")
    summaries = await asyncio.gather(*(cloud.storage.merge_duplicates(k.now_ms()) for _ in range(3)))
    assert sum(s.merged for s in summaries) == 3
    oldest = ids[-1]
    merges = await cloud.storage.list_merges(k.BRAND)
    assert sorted(m.duplicate_id for m in merges) == sorted(ids[:-1])
    assert {m.survivor_id for m in merges} == {oldest}
    assert await cloud.storage.audit_balances() == []


async def test_merged_points_keep_their_expiry_dates(cloud: k.Cloud) -> None:
    await cloud.storage.set_program(k.BRAND, "Expiring", 1, 100, k.now_ms(),
                                    json.dumps({"expiry": {"mode": "after_earned", "months": 6}}))
    older, newer = k.any_uuid(), k.any_uuid()
    jan, mar = ms("2026-01-10T00:00:00"), ms("2026-03-05T00:00:00")
    await cloud.send(cloud.stores["store-a"], [at(enroll(older, card="C-1"), jan - 1),
                                               at(k.earn(older, "s1", 100), jan)])
    await cloud.send(cloud.stores["store-b"], [at(enroll(newer, card="C-1"), mar - 1),
                                               at(k.earn(newer, "s2", 50), mar)])
    await merges_done(cloud, 1)
    page, _ = await cloud.pull(cloud.stores["store-a"])
    (survivor,) = [c for c in page.customers if c.customer_id == older]
    assert survivor.expiring == ((ms("2026-07-10T00:00:00"), 100), (ms("2026-09-05T00:00:00"), 50))
    summary = await cloud.storage.run_expiry(ms("2026-08-01T00:00:00"))
    assert summary.points_expired == 100
    assert await cloud.balances() == {older: 50, newer: 0}


def test_the_cli_lists_the_merges(tmp_path: Path, backend: k.Backend) -> None:
    run = backend.cli_text(tmp_path / "data")

    run("init")
    run("brand", "add", "acme", "--name", "Acme")
    assert run("merges", "acme") == ""
    assert "no brand 'nope'" in run("merges", "nope", expect=2)

    async def collide() -> None:
        storage = backend.storage(tmp_path / "data")
        await storage.open(k.now_ms())
        try:
            await storage.set_program("acme", "P", 1, 100, k.now_ms())
            await storage.add_store("store-a", "acme", k.StoreSigner("store-a").public_raw, k.now_ms())
        finally:
            await storage.close()

    k.run_sync(collide())
    older, newer = k.any_uuid(), k.any_uuid()
    for n, cid in enumerate((older, newer)):
        phone = f"'+3365555555{n}'"
        when = k.now_ms() - 10_000 + n
        k.run_sync(backend.execute(
            DataDir(tmp_path / "data").db_file,
            "INSERT INTO customers (customer_id, brand_id, name, phone, email, card_code, consent, balance, version,"
            f" enrolled_store, created_at, updated_at) VALUES ('{cid}', 'acme', 'X', {phone}, NULL, 'CARD-3', '{{}}',"
            f" 0, {n + 1}, 'store-a', {when}, {when})"))
    lines = run("merges", "acme", "--run").splitlines()
    assert json.loads(lines[0]) == {"run": {"collisions": 1, "merged": 1}}
    record = json.loads(lines[1])
    assert (record["survivor_id"], record["duplicate_id"], record["reason"]) == (older, newer, "card_code")
    assert len(run("merges", "acme").splitlines()) == 1


async def test_merges_and_reconcilers_at_once_on_postgres(ledger: Ledger, pg: k.Backend) -> None:
    """Two reconcilers apply batches on both profiles while merges run: everyone locks the
    customers in customer_id order, so they wait for each other, never deadlock, and no point is
    lost or counted twice."""
    assert pg.dsn is not None
    older, newer = k.any_uuid(), k.any_uuid()
    await ledger.send("store-a", [enroll(older, phone="+33677777770", age_ms=5_000), k.earn(older, "o-0", 1000)])
    await ledger.send("store-b", [enroll(newer, phone="+33677777771"), k.earn(newer, "n-0", 1000)])
    await k.run_async_rows(pg.dsn, f"UPDATE customers SET card_code = 'CARD-R' WHERE customer_id IN"
                                   f" ('{older}', '{newer}')")

    async def store(name: str) -> list[Ack]:
        return [await ledger.send(name, [k.earn(newer, f"{name}-n{i}", 5), k.earn(older, f"{name}-o{i}", 5)])
                for i in range(10)]

    async def merges() -> int:
        merged = 0
        for _ in range(5):  # while the stores' batches are being applied
            await asyncio.sleep(0.02)
            merged += (await ledger.storage.merge_duplicates(k.now_ms())).merged
        return merged

    acks_a, acks_b, merged = await asyncio.wait_for(asyncio.gather(store("store-a"), store("store-b"), merges()), 60)
    assert merged == 1
    assert all(r.status is OpStatus.APPLIED for ack in acks_a + acks_b for r in ack.results)
    rows = dict(await k.run_async_rows(pg.dsn, f"SELECT customer_id, balance FROM customers WHERE customer_id IN"
                                               f" ('{older}', '{newer}')"))
    assert rows == {older: 2200, newer: 0}
    assert await ledger.storage.audit_balances() == []


async def test_erasing_a_merged_person_erases_every_profile_of_theirs(cloud: k.Cloud) -> None:
    older, newer = await two_profiles_one_card(cloud)
    # The tombstone kept its own phone (the survivor had one): it must go with the person.
    assert await rows(cloud, f"SELECT phone FROM customers WHERE customer_id = '{newer}'") == [("+33622222222",)]
    record = await cloud.storage.erase_customer(k.BRAND, newer, "privacy desk", "request 12", k.now_ms())
    assert record.customer_id == older  # the duplicate's id names its survivor
    assert record.scrubbed["merged_profiles"] == 1
    left = await rows(cloud, "SELECT customer_id, name, phone, email, card_code, erased_at IS NOT NULL FROM customers"
                             f" WHERE customer_id IN ('{older}', '{newer}') ORDER BY customer_id")
    assert sorted(left) == sorted([(older, "", None, None, None, True), (newer, "", None, None, None, True)])
    assert (await cloud.storage.get_customer(older)).balance == 130  # type: ignore[union-attr]
    downlink, _ = await cloud.pull(cloud.stores["store-a"])
    assert {c.customer_id for c in downlink.customers if c.erased} == {older, newer}


async def test_a_card_linked_to_the_duplicate_follows_the_person(cloud: k.Cloud) -> None:
    from .test_cloud_erasure import card_earn

    older, newer = k.any_uuid(), k.any_uuid()
    await cloud.send(cloud.stores["store-a"], [enroll(older, card="CARD-9", age_ms=60_000)])
    await cloud.send(cloud.stores["store-b"], [enroll(newer, card="CARD-9"), card_earn(newer, "s-1", "tok_dup_1"),
                                               card_earn(newer, "s-2", "tok_dup_1")])
    await merges_done(cloud, 1)
    assert await rows(cloud, "SELECT token, customer_id FROM card_links") == [("tok_dup_1", older)]
    assert await rows(cloud, f"SELECT COUNT(*) FROM card_streaks WHERE customer_id = '{newer}'") == [(0,)]
    downlink, _ = await cloud.pull(cloud.stores["store-a"])
    survivor = next(c for c in downlink.customers if c.customer_id == older)
    assert survivor.card_token == "tok_dup_1"
    assert next(c for c in downlink.customers if c.customer_id == newer).card_token is None
