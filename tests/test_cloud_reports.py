"""Reports on each backend, from a ledger filled through real batches with
ops dated on known days: the numbers, the brand scope, the periods, JSON and
CSV over the admin API, and bad parameters refused by name."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cloud.admin_api import hash_token, new_token
from cloud.periodic import run_periodic, utc_day
from protocol import Consent, Op, uuid7

from . import cloudkit as k

POINT_VALUE = json.dumps({"point_value": {"amount": 5, "points": 2}})


def at(day: str, hour: int = 12) -> int:
    when = dt.datetime.fromisoformat(day).replace(hour=hour, tzinfo=dt.UTC)
    return int(when.timestamp()) * 1000


def on(day: str, op: Op) -> Op:
    """The op as made on ``day`` (UTC noon); an enrollment's consent is dated with it."""
    when = at(day)
    if hasattr(op, "consent"):
        return dataclasses.replace(op, at=when, consent=dataclasses.replace(op.consent, at=when))  # type: ignore[arg-type]
    return dataclasses.replace(op, at=when)


def kiosk(op: Op) -> Op:
    return dataclasses.replace(op, consent=Consent(True, (), "kiosk", None, op.at))  # type: ignore[arg-type]


@dataclasses.dataclass
class Filled:
    cloud: k.Cloud
    c1: str
    c2: str
    c3: str


@pytest.fixture
async def filled(tmp_path: Path, backend: k.Backend) -> AsyncIterator[Filled]:
    """acme (a point is worth 2.5 minor units): three customers over March and April 2024; zeta: one."""
    async with k.running_cloud(tmp_path, backend) as cloud:
        await cloud.storage.set_program(k.BRAND, "Valued", 1, 100, k.now_ms(), POINT_VALUE)
        c1, c2, c3, cz = (k.any_uuid() for _ in range(4))
        a, b, z = (cloud.stores[s] for s in ("store-a", "store-b", "store-z"))
        await cloud.send(a, [on("2024-03-04", k.enroll(c1)), on("2024-03-04", k.earn(c1, "s1", 100)),
                             on("2024-03-04", kiosk(k.enroll(c2))), on("2024-03-05", k.earn(c2, "s2", 50))])
        await cloud.send(b, [on("2024-03-11", kiosk(k.enroll(c3))), on("2024-03-11", k.redeem(c1, "s3", 30)),
                             on("2024-03-11", k.earn(c3, "s5", 20))])
        await cloud.send(b, [on("2024-04-02", k.adjust(c2, 7)), on("2024-04-02", k.void(c3, "s5", 20, 0)),
                             on("2024-04-02", k.redeem(c2, "s6", 90))])  # 57 left: refused, 33 lost
        await cloud.send(a, [on("2024-04-03", k.adjust(c3, -10))])  # 0 left: refused, all 10 lost
        await cloud.send(z, [on("2024-03-04", k.enroll(cz)), on("2024-03-04", k.earn(cz, "z1", 999))])
        yield Filled(cloud, c1, c2, c3)


async def report(cloud: k.Cloud, token: str, name: str, brand: str = k.BRAND, **params: str) -> tuple[int, Any]:
    resp = await cloud.client.get(f"/v1/admin/brands/{brand}/reports/{name}", params=params,
                                  headers={"Authorization": f"Bearer {token}"})
    if resp.content_type == "text/csv":
        return resp.status, await resp.text()
    assert resp.content_type == "application/json"
    return resp.status, await resp.json()


async def operator(cloud: k.Cloud, brand_id: str | None = k.BRAND) -> str:
    token = new_token()
    now = k.now_ms()
    await cloud.storage.add_operator(uuid7(now), "Accountant", brand_id, hash_token(token), now)
    return token


def rows(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [tuple(row[c] for c in body["columns"]) for row in body["rows"]]


SPRING = {"from": "2024-03-01", "to": "2024-04-30"}


async def test_enrollment_per_store_and_channel(filled: Filled) -> None:
    token = await operator(filled.cloud)
    status, body = await report(filled.cloud, token, "enrollment", **SPRING)
    assert status == 200 and body["columns"] == ["store_id", "source", "enrolled"]
    assert rows(body) == [("store-a", "kiosk", 1), ("store-a", "pos", 1), ("store-b", "kiosk", 1)]
    _, march_5_on = await report(filled.cloud, token, "enrollment", **{"from": "2024-03-05", "to": "2024-04-30"})
    assert rows(march_5_on) == [("store-b", "kiosk", 1)]


async def test_active_customers_and_visits_per_day_week_and_month(filled: Filled) -> None:
    token = await operator(filled.cloud)
    _, daily = await report(filled.cloud, token, "activity", **SPRING)
    assert rows(daily) == [("2024-03-04", 1, 1), ("2024-03-05", 1, 1), ("2024-03-11", 2, 1)]
    _, weekly = await report(filled.cloud, token, "activity", period="week", **SPRING)
    assert rows(weekly) == [("2024-03-04", 2, 2), ("2024-03-11", 2, 1)]
    _, monthly = await report(filled.cloud, token, "activity", period="month", **SPRING)
    assert monthly["period"] == "month" and rows(monthly) == [("2024-03-01", 3, 3)]


async def test_points_earned_redeemed_adjusted_and_voided_per_period(filled: Filled) -> None:
    token = await operator(filled.cloud)
    _, monthly = await report(filled.cloud, token, "points", period="month", **SPRING)
    assert monthly["columns"] == ["period", "earned", "redeemed", "expired", "adjusted", "reversed", "other", "net"]
    assert rows(monthly) == [("2024-03-01", 170, 30, 0, 0, 0, 0, 140), ("2024-04-01", 0, 0, 0, 7, -20, 0, -13)]
    _, march = await report(filled.cloud, token, "points", period="month", **{"from": "2024-03-01",
                                                                              "to": "2024-03-31"})
    assert [r[0] for r in rows(march)] == ["2024-03-01"]


async def test_conflicts_with_what_they_lost_per_store(filled: Filled) -> None:
    token = await operator(filled.cloud)
    _, body = await report(filled.cloud, token, "conflicts", **SPRING)
    assert body["columns"] == ["store_id", "conflicts", "points_requested", "points_lost", "value_lost"]
    # b asked 90 of 57: 33 points lost, 82 minor units (floored); a asked 10 of 0
    assert rows(body) == [("store-a", 1, 10, 10, 25), ("store-b", 1, 90, 33, 82)]


async def test_liability_from_the_daily_snapshot_and_stores_with_their_last_sync(filled: Filled) -> None:
    cloud = filled.cloud
    now = k.now_ms()
    await run_periodic(cloud.storage, now)
    token = await operator(cloud)
    today = utc_day(now)
    _, body = await report(cloud, token, "liability", **{"from": today, "to": today})
    # 70 + 57 + 0 points; per store what its ops moved: a 100 + 50, b -30 + 20 + 7 - 20
    assert rows(body) == [(today, None, 127, 317, now), (today, "store-a", 150, 375, now),
                          (today, "store-b", -23, -58, now)]
    _, stores = await report(cloud, token, "stores")
    assert stores["columns"] == ["store_id", "applied_seq", "received_seq", "last_batch_at", "last_pull_at",
                                 "silent_24h"]
    got = {r[0]: r for r in rows(stores)}
    assert set(got) == {"store-a", "store-b"}
    assert got["store-a"][1:3] == (2, 2) and got["store-a"][3] >= now - 60_000 and got["store-a"][5] is False


async def test_csv_export_and_the_brand_scope(filled: Filled) -> None:
    cloud = filled.cloud
    token = await operator(cloud)
    status, text = await report(cloud, token, "points", period="month", format="csv", **SPRING)
    assert status == 200
    table = list(csv.reader(io.StringIO(text)))
    assert table == [["period", "earned", "redeemed", "expired", "adjusted", "reversed", "other", "net"],
                     ["2024-03-01", "170", "30", "0", "0", "0", "0", "140"],
                     ["2024-04-01", "0", "0", "0", "7", "-20", "0", "-13"]]
    status, body = await report(cloud, token, "points", brand=k.OTHER_BRAND)
    assert (status, body["error"]["code"]) == (403, "forbidden_brand")
    everyone = await operator(cloud, None)
    _, zeta = await report(cloud, everyone, "points", brand=k.OTHER_BRAND, period="month", **SPRING)
    assert rows(zeta) == [("2024-03-01", 999, 0, 0, 0, 0, 0, 999)]  # zeta's entries only


@pytest.mark.parametrize(("name", "params", "status", "code", "field"), [
    ("points", {"from": "2024-13-01"}, 400, "invalid_value", "from"),
    ("points", {"from": "2024-03-02", "to": "2024-03-01"}, 400, "invalid_value", "from"),
    ("points", {"from": "2023-01-01", "to": "2024-12-31"}, 400, "invalid_value", "from"),
    ("points", {"period": "year"}, 400, "invalid_value", "period"),
    ("points", {"format": "xml"}, 400, "invalid_value", "format"),
    ("points", {"colour": "red"}, 400, "unknown_field", "colour"),
    ("revenue", {}, 404, "unknown_report", "report"),
])
async def test_bad_parameters_are_refused_by_name(filled: Filled, name: str, params: dict[str, str], status: int,
                                                  code: str, field: str) -> None:
    token = await operator(filled.cloud, None)
    got, body = await report(filled.cloud, token, name, **params)
    assert (got, body["error"]["code"], body["error"]["field"]) == (status, code, field), body


async def test_an_unknown_brand_is_a_404(filled: Filled) -> None:
    token = await operator(filled.cloud, None)
    status, body = await report(filled.cloud, token, "stores", brand="nobody")
    assert (status, body["error"]["code"], body["error"]["field"]) == (404, "unknown_brand", "brand_id")


async def test_periods_across_a_year_end(tmp_path: Path, backend: k.Backend) -> None:
    async with k.running_cloud(tmp_path, backend) as cloud:
        cid = k.any_uuid()
        await cloud.send(cloud.stores["store-a"], [
            on("2023-12-31", k.enroll(cid)), on("2023-12-31", k.earn(cid, "s1", 10)),
            on("2024-01-01", k.earn(cid, "s2", 20)), on("2024-02-29", k.earn(cid, "s3", 40))])
        token = await operator(cloud)
        span = {"from": "2023-12-01", "to": "2024-02-29"}
        _, monthly = await report(cloud, token, "points", period="month", **span)
        assert [(r[0], r[1]) for r in rows(monthly)] == [("2023-12-01", 10), ("2024-01-01", 20), ("2024-02-01", 40)]
        _, weekly = await report(cloud, token, "activity", period="week", **span)
        # 2023-12-31 is a Sunday: its week began on Monday the 25th; 2024-01-01 starts the next
        assert [r[0] for r in rows(weekly)] == ["2023-12-25", "2024-01-01", "2024-02-26"]
        _, daily = await report(cloud, token, "points", **span)
        assert [r[0] for r in rows(daily)] == ["2023-12-31", "2024-01-01", "2024-02-29"]
