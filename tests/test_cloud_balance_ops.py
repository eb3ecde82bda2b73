"""Balance changes the cloud makes by itself, on both ledger backends: expiry
(idempotent, safe to interrupt, sent down with each customer's upcoming
expiries) and an operator's manual adjustment (storage, admin API, CLI)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cloud import balances, ledger
from cloud.errors import ConfigError, NotFound, Refused
from cloud.model import CLOUD_ORIGIN
from protocol import Op

from . import cloudkit as k
from .test_cloud_admin_api import call, make_operator


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def at(op: Op, when: str) -> Op:
    return dataclasses.replace(op, at=ms(when))


AFTER_6_MONTHS = json.dumps({"expiry": {"mode": "after_earned", "months": 6}})


@pytest.fixture
async def cloud(tmp_path: Path, backend: k.Backend) -> AsyncIterator[k.Cloud]:
    async with k.running_cloud(tmp_path, backend) as cloud:
        yield cloud


async def customer_with_history(cloud: k.Cloud, *ops: tuple[str, str, int]) -> str:
    """A customer of store-a with (when, kind, points) earns and redemptions, oldest first."""
    cid = k.any_uuid()
    batch: list[Op] = [at(k.enroll(cid, name=f"C {cid[:4]}"), "2025-12-31T00:00:00")]
    for n, (when, kind, points) in enumerate(ops):
        sale_id = f"{cid}-{n}"
        op = k.earn(cid, sale_id, points, amount=points * 100) if kind == "earn" else k.redeem(cid, sale_id, points)
        batch.append(at(op, when))
    await cloud.send(cloud.stores["store-a"], batch)
    return cid


async def test_points_expire_oldest_first_once_and_go_down_with_their_dates(cloud: k.Cloud) -> None:
    await cloud.storage.set_program(k.BRAND, "Expiring", 1, 100, k.now_ms(), AFTER_6_MONTHS)
    # Jan 100 and Mar 50 earned; 30 redeemed in June come off January's lot (the oldest).
    cid = await customer_with_history(cloud, ("2026-01-10T00:00:00", "earn", 100),
                                      ("2026-03-05T00:00:00", "earn", 50), ("2026-06-01T00:00:00", "redeem", 30))
    first, _ = await cloud.pull(cloud.stores["store-b"])
    (record,) = first.customers
    # Nothing has expired yet on 1 July: the edge learns both dates.
    assert record.expiring == ((ms("2026-07-10T00:00:00"), 70), (ms("2026-09-05T00:00:00"), 50))

    summary = await cloud.storage.run_expiry(ms("2026-08-01T00:00:00"))
    assert (summary.brands, summary.customers_expired, summary.points_expired) == (1, 1, 70)
    assert await cloud.balances() == {cid: 50}
    again = await cloud.storage.run_expiry(ms("2026-08-01T00:00:00"))
    assert (again.customers_checked, again.customers_expired, again.points_expired) == (1, 0, 0)  # idempotent
    rows = await cloud.backend.rows(cloud.db_path, "SELECT store_id, kind, points FROM ledger_entries"
                                                   " WHERE kind = 'expire'")
    assert rows == [(CLOUD_ORIGIN, "expire", -70)]
    assert await cloud.storage.audit_balances() == []

    # The balance changed, so the customer has a new version: the edges get it with the new dates.
    page, _ = await cloud.pull(cloud.stores["store-b"], cursor=first.to_cursor)
    (record,) = page.customers
    assert (record.balance, record.expiring) == (50, ((ms("2026-09-05T00:00:00"), 50),))
    await cloud.storage.run_expiry(ms("2026-09-05T00:00:00"))
    assert await cloud.balances() == {cid: 0}


async def test_inactivity_expires_the_whole_balance_and_activity_postpones_it(cloud: k.Cloud) -> None:
    await cloud.storage.set_program(k.BRAND, "Use them", 1, 100, k.now_ms(),
                                    json.dumps({"expiry": {"mode": "inactivity", "months": 12}}))
    idle = await customer_with_history(cloud, ("2025-01-15T00:00:00", "earn", 40))
    active = await customer_with_history(cloud, ("2025-01-15T00:00:00", "earn", 40),
                                         ("2025-11-01T00:00:00", "redeem", 10))
    summary = await cloud.storage.run_expiry(ms("2026-02-01T00:00:00"))
    assert (summary.customers_checked, summary.customers_expired, summary.points_expired) == (2, 1, 40)
    assert await cloud.balances() == {idle: 0, active: 30}


async def test_an_interrupted_run_leaves_what_a_whole_run_leaves(
    cloud: k.Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    await cloud.storage.set_program(k.BRAND, "Expiring", 1, 100, k.now_ms(), AFTER_6_MONTHS)
    ids = [await customer_with_history(cloud, ("2026-01-10T00:00:00", "earn", 10 + n)) for n in range(5)]
    real = balances.expire_customers
    calls = 0

    async def dies_on_the_third_chunk(*args: Any) -> tuple[int, int]:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("the process was killed")
        return await real(*args)

    monkeypatch.setattr(ledger, "EXPIRY_CHUNK", 2)
    monkeypatch.setattr(balances, "expire_customers", dies_on_the_third_chunk)
    with pytest.raises(RuntimeError):
        await cloud.storage.run_expiry(ms("2026-08-01T00:00:00"))
    left = {cid: points for cid, points in (await cloud.balances()).items() if points}
    assert len(left) == 1 and set(left) <= set(ids)  # two chunks of two committed, the third rolled back
    monkeypatch.setattr(balances, "expire_customers", real)
    summary = await cloud.storage.run_expiry(ms("2026-08-01T00:00:00"))
    assert (summary.customers_checked, summary.customers_expired, summary.points_expired) == (
        1, 1, *left.values())
    assert set((await cloud.balances()).values()) == {0}
    assert await cloud.storage.audit_balances() == []


async def test_a_new_expiry_policy_sends_every_customer_down_again(cloud: k.Cloud) -> None:
    await cloud.storage.set_program(k.BRAND, "Expiring", 1, 100, k.now_ms(), AFTER_6_MONTHS)
    cid = await customer_with_history(cloud, ("2026-01-10T00:00:00", "earn", 10))
    store = cloud.stores["store-b"]
    first, _ = await cloud.pull(store)
    await cloud.storage.set_program(k.BRAND, "Renamed", 1, 100, k.now_ms(), AFTER_6_MONTHS)
    unchanged, _ = await cloud.pull(store, cursor=first.to_cursor)
    assert unchanged.customers == ()  # same expiry: nobody's dates changed
    await cloud.storage.set_program(k.BRAND, "Longer", 1, 100, k.now_ms(),
                                    json.dumps({"expiry": {"mode": "after_earned", "months": 12}}))
    changed, _ = await cloud.pull(store, cursor=first.to_cursor)
    (record,) = changed.customers
    assert (record.customer_id, record.expiring) == (cid, ((ms("2027-01-10T00:00:00"), 10),))


# ------------------------------------------------------------- adjustments


async def test_an_adjustment_moves_the_balance_and_goes_down(cloud: k.Cloud) -> None:
    cid = await customer_with_history(cloud, ("2026-01-10T00:00:00", "earn", 30))
    store = cloud.stores["store-b"]
    first, _ = await cloud.pull(store)
    record = await cloud.storage.adjust_balance(k.BRAND, cid, -20, "double scan", "Maria", k.now_ms())
    assert (record.balance_after, record.actor, record.operator_id) == (10, "Maria", None)
    page, _ = await cloud.pull(store, cursor=first.to_cursor)
    assert [(c.customer_id, c.balance, c.version) for c in page.customers] == [(cid, 10, record.version)]
    assert await cloud.storage.audit_balances() == []
    before = await cloud.snapshot()
    for call_args, error in (
        ((k.BRAND, cid, -11, "too much", "Maria"), Refused),
        ((k.OTHER_BRAND, cid, 5, "wrong brand", "Maria"), NotFound),
        ((k.BRAND, k.any_uuid(), 5, "nobody", "Maria"), NotFound),
        ((k.BRAND, cid, 0, "nothing", "Maria"), ConfigError),
        ((k.BRAND, cid, 5, " ", "Maria"), ConfigError),
        ((k.BRAND, cid, 5, "why", "x" * 101), ConfigError),
    ):
        with pytest.raises(error):
            await cloud.storage.adjust_balance(*call_args, k.now_ms())
    assert await cloud.snapshot() == before  # a refusal changes nothing


async def test_adjustments_over_the_admin_api(cloud: k.Cloud) -> None:
    cid = await customer_with_history(cloud, ("2026-01-10T00:00:00", "earn", 30))
    operator, token = await make_operator(cloud, "Acme manager", k.BRAND)
    _, other = await make_operator(cloud, "Zeta manager", k.OTHER_BRAND)
    path = f"/v1/admin/brands/{k.BRAND}/customers/{cid}/adjustments"
    status, body = await call(cloud, "POST", path, token, {"points": 25, "reason": "birthday"})
    assert status == 201, body
    assert (body["points"], body["balance"], body["actor"], body["operator_id"]) == (
        25, 55, "Acme manager", operator.operator_id)
    before = await cloud.snapshot()
    for who, payload, expected in (
        (other, {"points": 5, "reason": "x"}, (403, "forbidden_brand", "brand_id")),
        (token, {"points": -56, "reason": "x"}, (422, "insufficient_balance", "points")),
        (token, {"points": "5", "reason": "x"}, (400, "invalid_type", "points")),
        (token, {"points": 5}, (400, "missing", "reason")),
        (token, {"points": 5, "reason": "x", "when": 1}, (400, "unknown_field", "when")),
    ):
        status, body = await call(cloud, "POST", path, who, payload)
        assert (status, body["error"]["code"], body["error"]["field"]) == expected
    status, body = await call(cloud, "POST", f"/v1/admin/brands/{k.BRAND}/customers/{k.any_uuid()}/adjustments",
                              token, {"points": 5, "reason": "x"})
    assert (status, body["error"]["code"]) == (404, "unknown_customer")
    assert await cloud.snapshot() == before


def test_the_cli_adjusts_expires_and_lists(tmp_path: Path, backend: k.Backend) -> None:
    run = backend.cli_text(tmp_path / "data")

    run("init")
    run("brand", "add", "acme", "--name", "Acme")
    settings = tmp_path / "settings.json"
    settings.write_text(AFTER_6_MONTHS)
    run("program", "set", "acme", "--name", "Acme", "--points-per-unit", "1", "--unit-amount", "100",
        "--settings", str(settings))
    signer = k.StoreSigner("store-a")
    run("store", "add", "store-a", "--brand", "acme", "--public-key", signer.public_raw.hex())
    cid = k.any_uuid()
    batch = [at(k.enroll(cid), "2026-01-01T00:00:00"), at(k.earn(cid, "s1", 40, amount=4_000), "2026-01-02T00:00:00")]

    async def apply() -> None:
        storage = backend.storage(tmp_path / "data")
        await storage.open(k.now_ms())
        try:
            from cloud.errors import NotYetApplied
            from cloud.keys import load_key
            from cloud.service import SyncService
            from cloud.worker import Worker

            key = load_key(tmp_path / "data" / "cloud.key")
            with pytest.raises(NotYetApplied):  # received; the reconciler here applies it
                await SyncService(storage, key, k.now_ms, ack_wait=0).submit_batch(signer.batch(batch)[0])
            assert await Worker(storage, key, k.now_ms).drain() == 1
        finally:
            await storage.close()

    k.run_sync(apply())
    adjusted = json.loads(run("adjust", "acme", cid, "-15", "--reason", "damaged card", "--actor", "Maria"))
    assert (adjusted["points"], adjusted["balance_after"], adjusted["actor"]) == (-15, 25, "Maria")
    assert "not enough points" in run("adjust", "acme", cid, "-26", "--reason", "x", "--actor", "M", expect=2)
    summary = json.loads(run("expire", "--now", str(ms("2026-08-01T00:00:00"))))
    assert (summary["customers_expired"], summary["points_expired"]) == (1, 25)
    assert json.loads(run("expire", "--now", str(ms("2026-08-01T00:00:00"))))["points_expired"] == 0
    assert run("mismatches") == "" and run("shortfalls", "--store", "store-a") == ""
