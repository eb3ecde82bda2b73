"""The periodic job on each backend: the integrity audit (balances and batch
chains, from a checkpoint), the liability snapshot, silent stores, expiry
and merges; every step safe to run twice."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloud.model import CLOUD_ORIGIN
from cloud.periodic import StepResult, run_periodic, utc_day
from cloud.reports import parse_query, run_report

from . import cloudkit as k

HOUR = 3_600_000
POINT_VALUE = json.dumps({"point_value": {"amount": 5, "points": 2}})  # 2.5 minor units a point


@pytest.fixture
async def cloud(tmp_path: Path, backend: k.Backend) -> AsyncIterator[k.Cloud]:
    async with k.running_cloud(tmp_path, backend) as cloud:
        yield cloud


def by_step(results: list[StepResult]) -> dict[str, StepResult]:
    return {r.step: r for r in results}


async def fill(cloud: k.Cloud) -> tuple[str, str]:
    """Two customers of acme, points moved by stores a and b; one of zeta."""
    c1, c2, cz = k.any_uuid(), k.any_uuid(), k.any_uuid()
    await cloud.send(cloud.stores["store-a"], [k.enroll(c1), k.earn(c1, "s1", 100), k.enroll(c2), k.adjust(c2, 7)])
    await cloud.send(cloud.stores["store-b"], [k.redeem(c1, "s2", 30), k.earn(c2, "s3", 20)])
    await cloud.send(cloud.stores["store-a"], [k.redeem(c2, "s4", 5)])
    await cloud.send(cloud.stores["store-z"], [k.enroll(cz), k.earn(cz, "z1", 40)])
    return c1, c2


async def test_a_sound_ledger_passes_and_the_snapshot_counts_brands_and_stores(cloud: k.Cloud) -> None:
    await cloud.storage.set_program(k.BRAND, "Valued", 1, 100, k.now_ms(), POINT_VALUE)
    await fill(cloud)
    now = k.now_ms()
    first = by_step(await run_periodic(cloud.storage, now))
    assert all(r.ok for r in first.values()), first
    assert first["audit_chains"].detail == {"batches_checked": 4, "problems": []}
    assert first["expire_points"].detail["points_expired"] == 0  # no expiry in this program
    assert first["merge_duplicates"].detail == {"collisions": 0, "merged": 0, "merges": []}
    snapshot = first["liability_snapshot"].detail
    assert snapshot["day"] == utc_day(now)
    # acme: 100 - 30 + 7 + 20 - 5 = 92 points, 92 * 5 // 2 = 230; zeta's program gives points no value
    assert snapshot["brands"] == [{"brand_id": "acme", "points": 92, "value": 230},
                                  {"brand_id": "zeta", "points": 40, "value": None}]
    rows = await cloud.storage.liability_snapshots(k.BRAND, utc_day(now), utc_day(now))
    # per store: what its ops moved (a: +100 +7 -5, b: -30 +20); the stores add up to the brand
    assert [(r.store_id, r.points, r.value) for r in rows] == [(None, 92, 230), ("store-a", 102, 255),
                                                              ("store-b", -10, -25)]

    # run again: same verdicts, the day's snapshot replaced (not doubled), no batch re-read
    before = await cloud.snapshot()
    again = by_step(await run_periodic(cloud.storage, now + 1000))
    assert all(r.ok for r in again.values())
    assert again["audit_chains"].detail["batches_checked"] == 0
    after = await cloud.snapshot()
    assert {t: rows for t, rows in after.items() if t not in ("liability_snapshots", "chain_audits")} == {
        t: rows for t, rows in before.items() if t not in ("liability_snapshots", "chain_audits")}
    rows = await cloud.storage.liability_snapshots(k.BRAND, utc_day(now), utc_day(now))
    assert [(r.store_id, r.points) for r in rows] == [(None, 92), ("store-a", 102), ("store-b", -10)]
    assert {r.taken_at for r in rows} == {now + 1000}


async def test_the_chain_audit_finds_a_changed_body_a_broken_link_and_a_gap(cloud: k.Cloud) -> None:
    await fill(cloud)
    a = cloud.stores["store-a"]
    await cloud.send(a, [k.enroll()])
    now = k.now_ms()
    assert by_step(await run_periodic(cloud.storage, now))["audit_chains"].ok
    # checked batches are not read again; a change to one is found by a full audit
    await cloud.execute("UPDATE batches SET hash = (SELECT hash FROM batches WHERE store_id = 'store-a' AND seq = 1)"
                        " WHERE store_id = 'store-a' AND seq = 2")
    incremental = by_step(await run_periodic(cloud.storage, now))["audit_chains"]
    assert incremental.ok and incremental.detail["batches_checked"] == 0
    full = by_step(await run_periodic(cloud.storage, now, full_audit=True))["audit_chains"]
    assert not full.ok and full.detail["problems"] == [{"store_id": "store-a", "seq": 2, "problem": "hash_mismatch"}]

    # a batch whose stored hash matches its body but not the next batch's prev_hash
    await cloud.send(cloud.stores["store-b"], [k.enroll()])
    await cloud.execute("UPDATE batches SET body = (SELECT body FROM batches WHERE store_id = 'store-b' AND seq = 1),"
                        " hash = (SELECT hash FROM batches WHERE store_id = 'store-b' AND seq = 1)"
                        " WHERE store_id = 'store-b' AND seq = 2")
    await cloud.send(cloud.stores["store-z"], [k.enroll()])
    await cloud.execute("DELETE FROM batches WHERE store_id = 'store-z' AND seq = 2")
    results = by_step(await run_periodic(cloud.storage, now))
    assert not results["audit_chains"].ok
    assert results["audit_chains"].detail["problems"] == [
        {"store_id": "store-b", "seq": 2, "problem": "chain_broken"},
        {"store_id": "store-z", "seq": 2, "problem": "head_mismatch"},
    ]
    # the other steps still ran
    assert results["liability_snapshot"].ok and results["silent_stores"].ok


async def test_a_balance_that_is_not_its_entries_fails_the_audit(cloud: k.Cloud) -> None:
    c1, _ = await fill(cloud)
    await cloud.execute(f"UPDATE customers SET balance = balance + 1 WHERE customer_id = '{c1}'")
    results = by_step(await run_periodic(cloud.storage, k.now_ms()))
    assert not results["audit_balances"].ok
    assert results["audit_balances"].detail["mismatches"] == [{"customer_id": c1, "balance": 71, "entries_total": 70}]


async def test_stores_not_heard_from_are_logged_and_listed(cloud: k.Cloud, caplog: pytest.LogCaptureFixture) -> None:
    now = k.now_ms()
    await cloud.send(cloud.stores["store-a"], [k.enroll()])
    await cloud.pull(cloud.stores["store-b"])
    assert by_step(await run_periodic(cloud.storage, now + 23 * HOUR))["silent_stores"].detail["silent"] == []
    silent = by_step(await run_periodic(cloud.storage, now + 25 * HOUR))["silent_stores"].detail["silent"]
    # store-z never spoke: silent since it was registered
    assert [s["store_id"] for s in silent] == ["store-a", "store-b", "store-z"]
    assert all(24 < s["hours"] < 26 for s in silent)
    assert silent[2]["last_heard_at"] is None and silent[0]["last_heard_at"] >= now
    assert "store store-z (zeta) not heard from in 25" in caplog.text
    quieter = by_step(await run_periodic(cloud.storage, now + 25 * HOUR, silent_hours=48))
    assert quieter["silent_stores"].detail["silent"] == []


async def test_expiry_runs_in_the_job_once(cloud: k.Cloud) -> None:
    await cloud.storage.set_program(k.BRAND, "Expiring", 1, 100, k.now_ms(),
                                    json.dumps({"expiry": {"mode": "after_earned", "months": 6}}))
    cid = k.any_uuid()
    await cloud.send(cloud.stores["store-a"], [k.enroll(cid), k.earn(cid, "s1", 40)])
    later = k.now_ms() + 200 * 24 * HOUR
    first = by_step(await run_periodic(cloud.storage, later))
    assert first["expire_points"].detail["points_expired"] == 40 and first["audit_balances"].ok
    assert await cloud.balances() == {cid: 0}
    again = by_step(await run_periodic(cloud.storage, later))
    assert again["expire_points"].detail["points_expired"] == 0
    # the snapshot counts the expired points out of the brand; the cloud made them, as a row of its own
    assert again["liability_snapshot"].detail["brands"][0] == {"brand_id": k.BRAND, "points": 0, "value": None}
    day = utc_day(later)
    rows = await cloud.storage.liability_snapshots(k.BRAND, day, day)
    assert [(r.store_id, r.points) for r in rows] == [(None, 0), (CLOUD_ORIGIN, -40), ("store-a", 40), ("store-b", 0)]
    # and the points report has them as expired, on the day they expired
    query = parse_query(k.BRAND, {"from": utc_day(k.now_ms()), "to": day, "period": "month"}, later)
    report = await run_report(cloud.storage, "points", query)
    totals = {c: sum(row[i] for row in report.rows) for i, c in enumerate(report.columns) if c != "period"}
    assert (totals["earned"], totals["expired"], totals["net"]) == (40, 40, 0)
