"""End to end, with the real `loyalty-cloud` and `loyalty-edge` processes on loopback."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.discovery import discover_edges

from .edgekit import Terminal
from .processkit import CloudProcess, EdgeProcess, cli, eventually, paired

RUN = uuid.uuid4().hex[:8]  # store names are advertised on the shared loopback: keep ours apart

pytestmark = pytest.mark.slow



@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session



async def has_program(session: aiohttp.ClientSession, edge: EdgeProcess) -> bool:
    async with session.get(edge.url + "/healthz") as response:
        data = await response.json()
    return not any("program" in reason for reason in data["reasons"])


async def profile(terminal: Terminal, customer_id: str) -> dict[str, Any]:
    status, data = await terminal.call("GET", f"/v1/customers/{customer_id}")
    assert status == 200, data
    return dict(data)


async def test_offline_terminal_work_converges_when_the_cloud_returns(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    cloud = CloudProcess(tmp_path)
    edge = EdgeProcess(tmp_path, cloud, f"store-a-{RUN}", zeroconf=True)
    try:
        cloud.service.start()
        edge.service.start()
        await eventually(lambda: has_program(session, edge), what="the program to reach the edge")
        cloud.service.stop()  # the internet goes down

        found = await discover_edges(3.0, interfaces=["127.0.0.1"], store_id=f"store-a-{RUN}")
        assert len(found) == 1 and found[0].port == edge.port and found[0].fingerprint == edge.key_id
        terminal = await paired(session, edge, base=found[0].url)
        customer = await terminal.enroll("Offline Olga", phone="+15145550200")
        cid = customer["customer_id"]
        for n, amount in enumerate((1_250, 4_999, 10_000)):
            status, data = await terminal.earn(cid, f"sale-{n}", amount)
            assert status == 201, data
        assert (await profile(terminal, cid))["balance"] == {"confirmed": 0, "pending": 161, "available": 0}

        cloud.service.start()  # back online: same data, same port

        async def converged() -> bool:
            return (await profile(terminal, cid))["balance"] == {"confirmed": 161, "pending": 0, "available": 161}

        await eventually(converged, what="the edge to converge")
        assert cloud.query("SELECT balance FROM customers WHERE customer_id = ?", cid) == [(161,)]
        assert cloud.query("SELECT COUNT(*) FROM ops WHERE store_id = ?", edge.store_id) == [(4,)]
    finally:
        edge.service.ensure_stopped()
        cloud.service.ensure_stopped()


async def test_two_offline_edges_redeem_the_same_points(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    cloud = CloudProcess(tmp_path)
    a = EdgeProcess(tmp_path, cloud, f"store-a-{RUN}")
    b = EdgeProcess(tmp_path, cloud, f"store-b-{RUN}")
    try:
        cloud.service.start()
        a.service.start()
        b.service.start()
        ta, tb = await paired(session, a), await paired(session, b)
        cid = (await ta.enroll("Shared Sam", phone="+15145550300"))["customer_id"]
        assert (await ta.earn(cid, "s1", 10_000))[0] == 201

        async def both_confirmed(points: int) -> bool:
            status, data = await tb.call("GET", f"/v1/customers/{cid}")
            if status != 200:
                return False
            return data["balance"]["confirmed"] == points and (await profile(ta, cid))["balance"]["confirmed"] == points

        await eventually(lambda: both_confirmed(100), what="both edges to see 100 points")
        cloud.service.stop()
        assert (await ta.redeem(cid, "ra", 80))[0] == 201
        assert (await tb.redeem(cid, "rb", 80))[0] == 201
        cloud.service.start()

        async def settled() -> bool:
            pa, pb = await profile(ta, cid), await profile(tb, cid)
            return pa["balance"]["pending"] == pb["balance"]["pending"] == 0 and await both_confirmed(20)

        await eventually(settled, what="both edges to settle at 20")
        conflicts = [(await t.call("GET", "/v1/conflicts"))[1]["conflicts"] for t in (ta, tb)]
        assert sorted(len(c) for c in conflicts) == [0, 1]
        refused = conflicts[0] or conflicts[1]
        assert refused[0]["code"] == "insufficient_balance" and refused[0]["points"] == 80
        assert cloud.query("SELECT COUNT(*) FROM conflicts") == [(1,)]
        assert cloud.query("SELECT balance FROM customers WHERE customer_id = ?", cid) == [(20,)]
    finally:
        for service in (a.service, b.service, cloud.service):
            service.ensure_stopped()


async def test_kill_9_during_a_burst_loses_no_acknowledged_op(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    cloud = CloudProcess(tmp_path)
    edge = EdgeProcess(tmp_path, cloud, f"store-k-{RUN}")
    try:
        cloud.service.start()
        edge.service.start()
        await eventually(lambda: has_program(session, edge), what="the program")
        terminal = await paired(session, edge)
        cid = (await terminal.enroll("Burst Bea", phone="+15145550400"))["customer_id"]
        acknowledged: list[str] = []
        deadline = time.monotonic() + 10

        async def worker(n: int) -> None:
            for i in range(200):  # bounded in count and in time
                if time.monotonic() > deadline:
                    return
                try:
                    status, data = await terminal.earn(cid, f"burst-{n}-{i}", 1_000)
                except (aiohttp.ClientError, ConnectionError):
                    return  # the edge died under us: this one was never acknowledged
                if status == 201:
                    acknowledged.append(data["op_id"])

        workers = [asyncio.create_task(worker(n)) for n in range(16)]
        await eventually(lambda: _true_after(len(acknowledged) >= 150), limit=20, what="a burst in flight")
        edge.service.kill9()
        await asyncio.gather(*workers)
        assert len(acknowledged) >= 150
        edge.service.start()

        async def drained() -> bool:
            rows = edge.query("SELECT COUNT(*) FROM outbox WHERE status IS NULL")
            return rows == [(0,)]

        await eventually(drained, what="the restarted edge to drain its outbox")
        in_cloud = dict(cloud.query("SELECT op_id, status FROM ops WHERE store_id = ?", edge.store_id))
        missing = [op for op in acknowledged if op not in in_cloud]
        assert not missing, f"{len(missing)} acknowledged ops never reached the cloud"
        assert all(in_cloud[op] == "applied" for op in acknowledged)
        twice = cloud.query("SELECT op_id FROM ledger_entries GROUP BY op_id HAVING COUNT(*) > 1")
        assert twice == []
        assert cloud.query("SELECT balance FROM customers WHERE customer_id = ?", cid) == [
            (10 * len(in_cloud) - 10,)  # every applied earn is 10 points; the enroll is the other op
        ]
    finally:
        edge.service.ensure_stopped()
        cloud.service.ensure_stopped()


async def test_an_offline_sale_with_a_loyalty_tender_and_a_promotion_then_a_partial_refund(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    cloud = CloudProcess(tmp_path)
    settings = tmp_path / "currency.json"
    # 5 loyalty cents per dollar (1 per 20 cents), and 100 more on any sale of $30 or more.
    settings.write_text('{"kind": "currency", "promotions": [{"kind": "spend_x", "min_spend": 3000, "bonus": 100}]}')
    cli("loyalty-cloud", "program", "set", "acme", "--name", "Acme dollars", "--points-per-unit", "1",
        "--unit-amount", "20", "--settings", str(settings), "--data", str(cloud.data))
    edge = EdgeProcess(tmp_path, cloud, f"store-o-{RUN}")
    try:
        cloud.service.start()
        edge.service.start()
        terminal = await paired(session, edge)

        async def has_version_2() -> bool:
            status, data = await terminal.call("POST", "/v1/quote", {"sale": coat_and_hats([])})
            return status == 200 and data["program_version"] == 2

        await eventually(has_version_2, what="the currency program to reach the edge")
        cid = (await terminal.enroll("Offline Otto", phone="+15145550600"))["customer_id"]
        online = {"sale_id": "on-1", "state": "paid", "lines": [
            {"line_id": "1", "sku": "coat", "quantity": 1, "unit_price": 10_000}],
            "tenders": [{"kind": "cash", "amount": 10_000}]}
        status, data = await terminal.call("POST", "/v1/earns", {"customer_id": cid, "sale": online})
        assert (status, data["points"]) == (201, 500 + 100), data

        async def confirmed(points: int) -> bool:
            balance = (await profile(terminal, cid))["balance"]
            return balance["pending"] == 0 and balance["confirmed"] == points

        await eventually(lambda: confirmed(600), what="the first sale to be confirmed")
        cloud.service.stop()  # the internet goes down

        status, quote = await terminal.call("POST", "/v1/quote", {"sale": coat_and_hats([]), "customer_id": cid})
        assert (quote["available"], quote["max_loyalty_tender"]) == (600, 600)
        status, data = await terminal.call("POST", "/v1/redemptions", {"customer_id": cid, "sale_id": "off-1",
                                                                      "amount": 500})
        assert status == 201, data
        tenders = [{"kind": "loyalty", "amount": 500}, {"kind": "card", "amount": 7_500, "card_token": "tok_e2e"}]
        status, data = await terminal.call("POST", "/v1/earns", {"customer_id": cid, "sale": coat_and_hats(tenders)})
        # $75 of $80 not paid with loyalty: 375, and the promotion's 100.
        assert (status, data["points"]) == (201, 475), data
        status, data = await terminal.call("POST", "/v1/sales/off-1/refunds",
                                           {"lines": [{"line_id": "hats", "quantity": 1}]})
        # What the sale still earns falls from 475 to 328 + 100 (a hat of $10 back);
        # 500 * 1,000 / 8,000 of the tender comes back, rounded up to 63.
        assert (status, data["reversed_points"], data["returned_points"]) == (201, 47, 63), data
        assert (await profile(terminal, cid))["balance"]["confirmed"] == 600

        cloud.service.start()  # back online
        await eventually(lambda: confirmed(600 - 500 + 475 - 47 + 63), what="the offline work to converge")
        assert cloud.query("SELECT balance FROM customers WHERE customer_id = ?", cid) == [(591,)]
        assert cloud.query("SELECT COUNT(*) FROM mismatches") == [(0,)]
    finally:
        edge.service.ensure_stopped()
        cloud.service.ensure_stopped()


def coat_and_hats(tenders: list[dict[str, Any]]) -> dict[str, Any]:
    return {"sale_id": "off-1", "state": "paid" if tenders else "open", "tenders": tenders, "lines": [
        {"line_id": "coat", "sku": "coat", "quantity": 1, "unit_price": 6_000},
        {"line_id": "hats", "sku": "hat", "quantity": 2, "unit_price": 1_000}]}


async def _true_after(value: bool) -> bool:
    return value


async def test_sigterm_drains_and_exits_cleanly(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    cloud = CloudProcess(tmp_path)
    edge = EdgeProcess(tmp_path, cloud, f"store-t-{RUN}", zeroconf=True)
    try:
        edge.service.start()
        assert edge.service.stop() == 0
        found = await discover_edges(1.5, interfaces=["127.0.0.1"], store_id=f"store-t-{RUN}")
        assert found == []  # unregistered on shutdown
    finally:
        edge.service.ensure_stopped()
