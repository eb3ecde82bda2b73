"""Retroactive claims through real edges, the real aiohttp portal and a real cloud
(both backends): a sale recorded without a profile gets a claim code; a cashier
(terminal) or the customer (portal) uses it once, within the window, and earns
its points by the sale's program version; a second, expired or guessed claim is
refused; refused attempts are limited, and the limit survives a restart; an edge
honours a claim offline and the cloud applies it once; a claim made both at an
edge and on the portal ends with one earn and a conflict."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from edge.appkeys import STORE
from edge.claim_writes import CLAIM_FAILURES_PER_HOUR
from protocol.claims import DAY_MS

from . import cloudkit as k
from .claimkit import Shop, sale, shops
from .edgekit import Terminal, install_program, make_edge_config, pair, running_edge
from .portalkit import Browser

CODE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{4}(-[0-9A-HJKMNP-TV-Z]{4}){3}$")
#: 10 points for $10 at 1 per 100, plus the visit's 2.
POINTS = 12


async def unclaimed(shop: Shop, sale_id: str, amount: int = 1000) -> dict[str, Any]:
    answer = await shop.earn({"sale": sale(sale_id, amount)})
    assert answer["customer_id"] is None and CODE.fullmatch(answer["claim"]["code"]), answer
    return dict(answer)


async def claim_at(shop: Shop, code: str, customer_id: str) -> tuple[int, Any]:
    return await shop.call("POST", "/v1/claims", {"code": code, "customer_id": customer_id})


async def cloud_balance(cloud: k.Cloud, customer_id: str) -> int:
    rows = await cloud.backend.rows(cloud.db_path, f"SELECT balance FROM customers WHERE customer_id = '{customer_id}'")
    return int(rows[0][0])


async def sale_earns(cloud: k.Cloud, sale_id: str) -> list[tuple[str, int]]:
    rows = await cloud.backend.rows(
        cloud.db_path, f"SELECT customer_id, points FROM ledger_entries WHERE sale_id = '{sale_id}' ORDER BY id")
    return [(r[0], r[1]) for r in rows]


async def test_a_cashier_claims_a_receipt_once_and_a_guess_or_a_second_claim_is_refused(
        tmp_path: Path, backend: k.Backend) -> None:
    async with shops(tmp_path, backend) as (portal, (shop,)):
        receipt = await unclaimed(shop, "r1")
        assert receipt["points"] == POINTS and receipt["amount"] == 1000
        code = receipt["claim"]["code"]
        assert receipt["claim"]["qr"].endswith(f"/portal/{k.BRAND}/claim?code={quote(code)}")
        recorded_at = int(receipt["op_id"].replace("-", "")[:12], 16)  # a UUIDv7 starts with its time
        assert receipt["claim"]["expires_at"] == recorded_at + 30 * DAY_MS
        ada = await shop.enroll("Ada", "+15145550201")
        # Typed loosely: lower case, no dashes.
        status, claimed = await claim_at(shop, code.lower().replace("-", ""), ada)
        assert status == 201, claimed
        assert (claimed["customer_id"], claimed["sale_id"], claimed["points"]) == (ada, "r1", POINTS)
        assert (await shop.balance(ada))["pending"] == POINTS
        status, again = await claim_at(shop, code, ada)
        assert (status, again["error"]["code"], again["error"]["field"]) == (409, "already_claimed", "code")
        for guess in ("ZZZZ-ZZZZ-ZZZZ-ZZZZ", "not a code"):
            status, wrong = await claim_at(shop, guess, ada)
            assert (status, wrong["error"]["code"]) == (404, "unknown_code")
        status, unknown = await claim_at(shop, code, k.any_uuid())
        assert (status, unknown["error"]["code"]) == (404, "unknown_customer")
        # The same sale cannot also earn for a profile directly.
        status, direct = await shop.call("POST", "/v1/earns", {"customer_id": ada, "sale": sale("r1")})
        assert (status, direct["error"]["code"]) == (409, "already_earned")
        await shop.settle()
        assert await cloud_balance(portal.cloud, ada) == POINTS == (await shop.balance(ada))["confirmed"]
        rows = await portal.cloud.backend.rows(
            portal.cloud.db_path, "SELECT customer_id, claimed_via, points FROM claimable_sales")
        assert [tuple(r) for r in rows] == [(ada, "shop-a", POINTS)]
        assert await portal.cloud.storage.list_mismatches() == []


async def test_pruning_forgets_a_receipt_a_month_after_its_code_expired(tmp_path: Path, backend: k.Backend) -> None:
    from edge.outbox import ACKED_KEEP_MS, prune

    async with shops(tmp_path, backend) as (_portal, (shop,)):
        ada = await shop.enroll("Ada", "+15145550209")
        receipt = await unclaimed(shop, "p1")
        store = shop.app[STORE]
        expires = receipt["claim"]["expires_at"]
        assert (await store.write(prune(expires + ACKED_KEEP_MS - 1)))["claims"] == 0
        shop.clock.offset_ms = 31 * DAY_MS
        status, late = await claim_at(shop, receipt["claim"]["code"], ada)
        assert (status, late["error"]["code"]) == (410, "claim_expired")  # still known: refused as expired
        assert (await store.write(prune(expires + ACKED_KEEP_MS + 1)))["claims"] == 1
        status, gone = await claim_at(shop, receipt["claim"]["code"], ada)
        assert (status, gone["error"]["code"]) == (404, "unknown_code")


async def test_a_claim_after_the_window_is_refused_at_the_terminal(tmp_path: Path, backend: k.Backend) -> None:
    async with shops(tmp_path, backend) as (portal, (shop,)):
        ada = await shop.enroll("Ada", "+15145550202")
        first, second = await unclaimed(shop, "w1"), await unclaimed(shop, "w2")
        assert second["claim"]["expires_at"] - shop.clock() * 1000 > 29.9 * DAY_MS  # 30 days by default
        shop.clock.offset_ms = 29 * DAY_MS
        status, _ = await claim_at(shop, first["claim"]["code"], ada)
        assert status == 201
        shop.clock.offset_ms = 31 * DAY_MS
        status, late = await claim_at(shop, second["claim"]["code"], ada)
        assert (status, late["error"]["code"]) == (410, "claim_expired")
        # A program setting shortens the window.
        program = await portal.cloud.storage.set_program(k.BRAND, "Acme Rewards", 1, 100, k.now_ms(),
                                                         '{"claim_window_days": 2}')
        install_program(shop.config, program)
        shop.app[STORE].forget_program()
        short = await unclaimed(shop, "w3")
        assert short["claim"]["expires_at"] - shop.clock() * 1000 <= 2 * DAY_MS + 1000
        shop.clock.offset_ms += 3 * DAY_MS
        status, late = await claim_at(shop, short["claim"]["code"], ada)
        assert (status, late["error"]["code"]) == (410, "claim_expired")


async def test_the_terminal_limit_on_refused_claims_survives_a_restart(tmp_path: Path) -> None:
    config = make_edge_config(tmp_path / "edge")
    install_program(config)
    async with aiohttp.ClientSession() as session:
        async with running_edge(config) as (_, base):
            till = await pair(session, base, config)
            ada = (await till.enroll("Ada", "+15145550203"))["customer_id"]
            status, receipt = await till.call("POST", "/v1/earns", {"sale": sale("l1")})
            assert status == 201, receipt
            for _ in range(CLAIM_FAILURES_PER_HOUR):
                status, wrong = await till.call("POST", "/v1/claims", {"code": "ZZZZ-ZZZZ-ZZZZ-ZZZZ",
                                                                       "customer_id": ada})
                assert status == 404, wrong
        async with running_edge(config) as (_, base):
            again = Terminal(session, base, till.token)
            status, limited = await again.call("POST", "/v1/claims", {"code": receipt["claim"]["code"],
                                                                      "customer_id": ada})
            assert (status, limited["error"]["code"]) == (429, "too_many_claims"), limited
            assert limited["error"]["retry_after_ms"] > 0
            # Another terminal has its own count.
            other = await pair(session, base, config, "Till 2")
            status, claimed = await other.call("POST", "/v1/claims", {"code": receipt["claim"]["code"],
                                                                      "customer_id": ada})
            assert status == 201, claimed


async def test_a_customer_claims_on_the_portal(tmp_path: Path, backend: k.Backend) -> None:
    clock = k.Clock()
    async with shops(tmp_path, backend, clock=clock) as (portal, (shop,)):
        ada = await shop.enroll("Ada", "+15145550204")
        receipt, old = await unclaimed(shop, "q1"), await unclaimed(shop, "q2")
        await shop.settle()
        browser = Browser(portal)
        code = receipt["claim"]["code"]
        await browser.get(f"/portal/{k.BRAND}/claim?code={quote(code)}")
        assert browser.status == 200 and "Sign in" in browser.html and 'name="code"' not in browser.html
        await browser.sign_in("+15145550204")
        qr = urlsplit(receipt["claim"]["qr"])  # the QR code leads to the cloud's portal
        await browser.get(f"{qr.path}?{qr.query}")
        assert browser.status == 200 and f'value="{code}"' in browser.html, browser.html
        await browser.post(f"/portal/{k.BRAND}/claim", {"code": code})
        assert browser.status == 200 and 'id="claimed"' in browser.html, browser.html
        assert f"You earned {POINTS} points" in browser.html
        assert await cloud_balance(portal.cloud, ada) == POINTS
        earned = await portal.cloud.backend.rows(
            portal.cloud.db_path,
            f"SELECT kind, data FROM messages WHERE customer_id = '{ada}' AND kind = 'points_earned'")
        assert [(kind, json.loads(data)) for kind, data in earned] == [
            ("points_earned", {"points": POINTS, "balance": POINTS})]
        await browser.post(f"/portal/{k.BRAND}/claim", {"code": code})
        assert browser.status == 409 and "already claimed" in browser.html
        await browser.post(f"/portal/{k.BRAND}/claim", {"code": "ZZZZ-ZZZZ-ZZZZ-ZZZZ"})
        assert browser.status == 404 and 'id="error"' in browser.html
        assert await cloud_balance(portal.cloud, ada) == POINTS
        # The edge hears of the balance with its next pull.
        await shop.settle()
        assert (await shop.balance(ada))["confirmed"] == POINTS
        # A month later (time passed in), the other receipt has expired.
        clock.offset = 31 * DAY_MS
        late = Browser(portal)
        await late.sign_in("+15145550204")
        await late.get(f"/portal/{k.BRAND}/claim")
        await late.post(f"/portal/{k.BRAND}/claim", {"code": old["claim"]["code"]})
        assert late.status == 410 and "expired" in late.html
        assert await cloud_balance(portal.cloud, ada) == POINTS
        assert await portal.cloud.storage.audit_balances() == []  # the claim wrote its ledger entry


async def test_refused_portal_claims_are_limited_per_customer(tmp_path: Path, backend: k.Backend) -> None:
    async with shops(tmp_path, backend) as (portal, (shop,)):
        await shop.enroll("Ada", "+15145550205")
        receipt = await unclaimed(shop, "m1")
        await shop.settle()
        browser = Browser(portal)
        await browser.sign_in("+15145550205")
        await browser.get(f"/portal/{k.BRAND}/claim")
        for _ in range(10):
            await browser.post(f"/portal/{k.BRAND}/claim", {"code": "ZZZZ-ZZZZ-ZZZZ-ZZZZ"})
            assert browser.status == 404
        await browser.post(f"/portal/{k.BRAND}/claim", {"code": receipt["claim"]["code"]})
        assert browser.status == 429 and "Too many" in browser.html
        # Counted in the ledger's database (a restart keeps them), per customer and per client address.
        stored = await portal.cloud.backend.rows(
            portal.cloud.db_path, "SELECT key, count FROM portal_limits WHERE key LIKE 'claim:%' ORDER BY key")
        assert [(key.split(":")[1], count) for key, count in stored] == [("address", 10), ("customer", 10)]
        rows = await portal.cloud.backend.rows(portal.cloud.db_path,
                                               "SELECT count(*) FROM claimable_sales WHERE customer_id IS NULL")
        assert rows[0][0] == 1


async def test_a_claim_made_offline_at_the_edge_gives_the_cloud_the_same_balance(
        tmp_path: Path, backend: k.Backend) -> None:
    async with shops(tmp_path, backend) as (portal, (shop,)):
        ada = await shop.enroll("Ada", "+15145550206")
        await shop.settle()
        with shop.offline():
            receipt = await unclaimed(shop, "o1", 2500)
            status, claimed = await claim_at(shop, receipt["claim"]["code"], ada)
            assert status == 201 and claimed["points"] == 25 + 2
            assert await shop.balance(ada) == {"confirmed": 0, "pending": 27, "available": 0}
        await shop.settle()
        assert await cloud_balance(portal.cloud, ada) == 27 == (await shop.balance(ada))["confirmed"]
        assert await sale_earns(portal.cloud, "o1") == [(ada, 27)]
        # The claimed sale is the customer's now: a void takes its points back, at the edge and in the cloud.
        status, voided = await shop.call("POST", "/v1/sales/o1/void", {})
        assert status == 201 and voided["reversed_points"] == 27, voided
        await shop.settle()
        assert await cloud_balance(portal.cloud, ada) == 0


async def test_a_claim_at_the_edge_and_on_the_portal_is_one_earn_and_a_conflict(
        tmp_path: Path, backend: k.Backend) -> None:
    async with shops(tmp_path, backend) as (portal, (shop,)):
        ada = await shop.enroll("Ada", "+15145550207")
        bob = await shop.enroll("Bob", "+15145550208")
        receipt = await unclaimed(shop, "d1")
        await shop.settle()
        with shop.offline():
            # The store is offline: its cashier claims the receipt for Bob...
            status, at_till = await claim_at(shop, receipt["claim"]["code"], bob)
            assert status == 201, at_till
            # ...while Ada claims it on the portal.
            browser = Browser(portal)
            await browser.sign_in("+15145550207")
            await browser.get(f"/portal/{k.BRAND}/claim")
            await browser.post(f"/portal/{k.BRAND}/claim", {"code": receipt["claim"]["code"]})
            assert browser.status == 200 and 'id="claimed"' in browser.html
        await shop.settle()
        assert await sale_earns(portal.cloud, "d1") == [(ada, POINTS)]
        assert (await cloud_balance(portal.cloud, ada), await cloud_balance(portal.cloud, bob)) == (POINTS, 0)
        conflicts = await portal.cloud.storage.list_conflicts()
        assert [(c.kind, c.customer_id, c.points_requested) for c in conflicts] == [("claim", bob, POINTS)]
        status, listed = await shop.call("GET", "/v1/conflicts")
        assert [(c["kind"], c["code"], c["customer_id"]) for c in listed["conflicts"]] == [
            ("claim", "already_claimed", bob)]
        assert await shop.balance(bob) == {"confirmed": 0, "pending": 0, "available": 0}
        assert (await shop.balance(ada))["confirmed"] == POINTS
        assert await portal.cloud.storage.audit_balances() == []
        report = await portal.cloud.storage.report_conflicts(k.BRAND, 0, k.now_ms() + 1)
        assert report == []  # a second claim lost the merchant nothing
