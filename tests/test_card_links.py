"""Card-linked profiles through real edges and a real cloud (both backends): a card is
linked after two consecutive card payments on sales carrying the profile, a new card
replaces it the same way, and a linked card earns with no profile attached, at this
edge and, once the cloud has sent the link down, at every edge of the brand. A card
number is refused everywhere and never written."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from protocol import CustomerRecord, LocalProtocolError

from . import cloudkit as k
from .claimkit import CARD_NUMBER, file_has, sale, shops

T1, T2 = "tok_visa_4242_a1", "tok_mc_5454_b2"


async def cloud_links(cloud: k.Cloud) -> list[tuple[str, str]]:
    rows = await cloud.backend.rows(cloud.db_path, "SELECT token, customer_id FROM card_links ORDER BY token")
    return [(r[0], r[1]) for r in rows]


async def test_two_consecutive_card_payments_link_the_card_and_a_new_card_replaces_it(
        tmp_path: Path, backend: k.Backend, caplog: pytest.LogCaptureFixture) -> None:
    for name in ("edge", "cloud", "protocol"):  # our own loggers, at their most talkative
        caplog.set_level(logging.DEBUG, logger=name)
    async with shops(tmp_path, backend) as (portal, (shop,)):
        ada = await shop.enroll("Ada", "+15145550101")
        first = await shop.earn({"customer_id": ada, "sale": sale("s1", token=T1)})
        assert first["card_linked"] is False and await shop.by_card(T1) == []
        # A cash sale is no card payment: it does not break the run.
        assert (await shop.earn({"customer_id": ada, "sale": sale("s2")}))["card_linked"] is False
        assert (await shop.earn({"customer_id": ada, "sale": sale("s3", token=T1)}))["card_linked"] is True
        assert [c["customer_id"] for c in await shop.by_card(T1)] == [ada]
        # A new card: one payment changes nothing, the second replaces the old card.
        await shop.earn({"customer_id": ada, "sale": sale("s4", token=T2)})
        assert [c["customer_id"] for c in await shop.by_card(T1)] == [ada]
        assert (await shop.earn({"customer_id": ada, "sale": sale("s5", token=T2)}))["card_linked"] is True
        assert await shop.by_card(T1) == []
        assert [c["customer_id"] for c in await shop.by_card(T2)] == [ada]
        # Paying with the linked card earns with no profile attached.
        by_card = await shop.earn({"sale": sale("s6", 2000, token=T2)})
        assert (by_card["customer_id"], by_card["resolved_by"], by_card["points"]) == (ada, "card", 22)
        await shop.settle()
        assert await cloud_links(portal.cloud) == [(T2, ada)]
        cloud_balance = (await portal.cloud.backend.rows(
            portal.cloud.db_path, f"SELECT balance FROM customers WHERE customer_id = '{ada}'"))[0][0]
        assert cloud_balance == (await shop.balance(ada))["confirmed"] == 5 * 12 + 22
        # The pull brought the cloud's link back: the same card, still linked.
        assert [c["customer_id"] for c in await shop.by_card(T2)] == [ada]
    for token in (T1, T2):
        assert token not in caplog.text, "a card token was logged"


async def test_two_payments_that_are_not_consecutive_link_nothing(tmp_path: Path, backend: k.Backend) -> None:
    async with shops(tmp_path, backend) as (portal, (shop,)):
        ada = await shop.enroll("Ada", "+15145550102")
        for number, token in enumerate((T1, T2, T1)):
            assert (await shop.earn({"customer_id": ada, "sale": sale(f"n{number}", token=token)}))[
                "card_linked"] is False
        assert await shop.by_card(T1) == [] and await shop.by_card(T2) == []
        # Two cards in one sale name no single card: the run starts again.
        split = sale("n3", token=T1)
        split["tenders"] = [{"kind": "card", "amount": 500, "card_token": T1},
                            {"kind": "card", "amount": 500, "card_token": T2}]
        await shop.earn({"customer_id": ada, "sale": split})
        await shop.earn({"customer_id": ada, "sale": sale("n4", token=T1)})
        assert await shop.by_card(T1) == []
        # Paying with an unlinked card records the sale unclaimed.
        unlinked = await shop.earn({"sale": sale("n5", token=T1)})
        assert unlinked["customer_id"] is None and "code" in unlinked["claim"]
        await shop.settle()
        assert await cloud_links(portal.cloud) == []
        assert await shop.by_card(T1) == []


async def test_a_card_linked_at_one_store_earns_at_another_after_sync(tmp_path: Path, backend: k.Backend) -> None:
    async with shops(tmp_path, backend, ("shop-a", "shop-b")) as (portal, (a, b)):
        ada = await a.enroll("Ada", "+15145550103")
        await a.earn({"customer_id": ada, "sale": sale("a1", token=T1)})
        await a.earn({"customer_id": ada, "sale": sale("a2", token=T1)})
        await a.settle()
        assert await cloud_links(portal.cloud) == [(T1, ada)]
        deadline = time.monotonic() + 20
        while not await b.by_card(T1):  # store b pulls every 0.2 s
            assert time.monotonic() < deadline, "the link never reached the other store"
            await asyncio.sleep(0.1)
        there = await b.earn({"sale": sale("b1", 3000, token=T1)})
        assert (there["customer_id"], there["resolved_by"], there["points"]) == (ada, "card", 32)
        await b.settle()
        await a.settle()
        rows = await portal.cloud.backend.rows(
            portal.cloud.db_path, f"SELECT balance FROM customers WHERE customer_id = '{ada}'")
        assert rows[0][0] == 12 + 12 + 32 == (await a.balance(ada))["confirmed"] == (await b.balance(ada))["confirmed"]


async def test_a_card_number_is_refused_everywhere_and_never_written(tmp_path: Path, backend: k.Backend) -> None:
    async with shops(tmp_path, backend) as (portal, (shop,)):
        ada = await shop.enroll("Ada", "+15145550104")
        for number in (CARD_NUMBER, "4111 1111 1111 1111", "4111-1111-1111-1111"):
            for body in ({"customer_id": ada, "sale": sale("p1", token=number)}, {"sale": sale("p2", token=number)}):
                status, data = await shop.call("POST", "/v1/earns", body)
                assert (status, data["error"]["code"], data["error"]["field"]) == (
                    400, "card_number_refused", "tenders[0].card_token"), data
                assert "1111" not in data["error"]["message"]
            status, data = await shop.call("POST", "/v1/quote", {"sale": sale("p3", token=number)})
            assert (status, data["error"]["code"]) == (400, "card_number_refused")
            status, data = await shop.call("GET", f"/v1/customers?card_token={number.replace(' ', '%20')}")
            assert (status, data["error"]["code"], data["error"]["field"]) == (400, "card_number_refused",
                                                                              "card_token")
        with pytest.raises(LocalProtocolError) as refused:
            CustomerRecord(ada, "Ada", None, None, None, 0, 1, card_token=CARD_NUMBER)
        assert refused.value.code == "card_number_refused"
        await shop.earn({"customer_id": ada, "sale": sale("p4", token=T1)})  # something real goes through
        await shop.settle()
        assert shop.unacked() == 0
        assert not file_has(shop.config.db_path, CARD_NUMBER.encode())
        assert file_has(shop.config.db_path, T1.encode())  # the scan does find what is there
        if portal.cloud.db_path.exists():  # the SQLite backend's ledger file
            assert not file_has(portal.cloud.db_path, CARD_NUMBER.encode())
