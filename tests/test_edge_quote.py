"""Quotes and whole-sale earns at the edge: the shared rules, over HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.config import EdgeConfig
from protocol import Program

from .edgekit import Terminal, install_program, make_edge_config, pair, running_edge, set_confirmed, with_conn


@pytest.fixture
async def terminal(tmp_path: Path) -> AsyncIterator[tuple[Terminal, EdgeConfig]]:
    config = make_edge_config(tmp_path / "edge")
    install_program(config)  # 1 point per 100 minor units
    async with running_edge(config) as (_, base), aiohttp.ClientSession() as session:
        yield await pair(session, base, config), config


def a_sale(**extra: Any) -> dict[str, Any]:
    sale: dict[str, Any] = {
        "sale_id": "s-100",
        "state": "paid",
        "lines": [
            {"line_id": "1", "sku": "coat", "quantity": 1, "unit_price": 6_000, "line_discount": 1_000, "tax": 750},
            {"line_id": "2", "sku": "hat", "quantity": 2, "unit_price": 1_000, "tax": 300},
        ],
        "sale_discount": 500,
        "tenders": [{"kind": "loyalty", "amount": 1_510}, {"kind": "card", "amount": 6_040, "card_token": "tok_9"}],
    }
    sale.update(extra)
    return sale


CURRENCY = Program("demo", 2, "Demo dollars", 1, 100, '{"kind": "currency"}')
POINTS = Program("demo", 3, "Demo points", 1, 100, json.dumps({"rewards": [
    {"reward_id": "coffee", "name": "Free coffee", "points": 50, "kind": "free_item", "sku": "coffee"},
    {"reward_id": "five-off", "name": "$5 off", "points": 500, "kind": "fixed_discount", "amount": 500},
    {"reward_id": "big", "name": "Big one", "points": 5000, "kind": "percentage", "percent": 20},
]}))


async def test_quote_follows_the_rules_and_stores_nothing(terminal: tuple[Terminal, EdgeConfig]) -> None:
    t, config = terminal
    install_program(config, CURRENCY)
    customer = await t.enroll("Quin", phone="+15145550500")
    set_confirmed(config, customer["customer_id"], 3_000)
    status, quote = await t.call("POST", "/v1/quote", {"sale": a_sale(), "customer_id": customer["customer_id"]})
    assert status == 200, quote
    # Lines after their own discounts: 5,000 + 2,000 = 7,000 (the sale discount changes nothing).
    # Total due 7,000 - 500 + 1,050 tax = 7,550; 1,510 paid with loyalty (20 %): earn on 80 %.
    assert quote["breakdown"]["eligible_amount"] == 5_600
    assert quote["points"] == 56
    assert quote["available"] == 3_000
    assert quote["max_loyalty_tender"] == 1_510  # what the card does not cover
    assert quote["program_kind"] == "currency" and quote["rewards"] == []
    assert with_conn(config, lambda c: c.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]) == 1  # the enroll
    status, quote = await t.call("POST", "/v1/quote", {"sale": a_sale(state="open", tenders=[])})
    assert status == 200 and quote["points"] == 0 and quote["reason"] == "not_paid"


async def test_quote_lists_the_rewards_within_reach(terminal: tuple[Terminal, EdgeConfig]) -> None:
    t, config = terminal
    install_program(config, POINTS)
    customer = await t.enroll("Uma", phone="+15145550503")
    set_confirmed(config, customer["customer_id"], 600)
    status, quote = await t.call("POST", "/v1/quote", {"sale": a_sale(), "customer_id": customer["customer_id"]})
    assert status == 200, quote
    assert [r["reward_id"] for r in quote["rewards"]] == ["coffee", "five-off"]
    assert quote["max_loyalty_tender"] is None and quote["program_version"] == 3


async def test_earn_with_a_whole_sale(terminal: tuple[Terminal, EdgeConfig]) -> None:
    t, _ = terminal
    customer = await t.enroll("Rae", phone="+15145550501")
    status, data = await t.call("POST", "/v1/earns", {"customer_id": customer["customer_id"], "sale": a_sale()})
    assert status == 201, data
    assert (data["sale_id"], data["points"], data["amount"]) == ("s-100", 56, 7_550)
    status, data = await t.call("POST", "/v1/earns", {"customer_id": customer["customer_id"],
                                                      "sale": a_sale(sale_id="s-101", state="open")})
    assert status == 422 and data["error"]["code"] == "sale_not_paid"


async def test_a_card_number_is_refused_and_never_stored(terminal: tuple[Terminal, EdgeConfig]) -> None:
    t, config = terminal
    customer = await t.enroll("Sid", phone="+15145550502")
    pan = "4111 1111 1111 1111"
    sale = a_sale(tenders=[{"kind": "card", "amount": 7_550, "card_token": pan}])
    for path, body in (("/v1/quote", {"sale": sale}),
                       ("/v1/earns", {"customer_id": customer["customer_id"], "sale": sale})):
        status, data = await t.call("POST", path, body)
        assert status == 400 and data["error"]["code"] == "card_number_refused", data
        assert data["error"]["field"] == "tenders[0].card_token"
        assert "4111 1111" not in str(data) and "41111111" not in str(data)
    raw = b"".join(p.read_bytes() for p in config.data_dir.iterdir() if p.name.startswith("edge.sqlite3"))
    # The whole number, in either spelling (short digit runs occur in hex ids by chance).
    assert b"4111111111111111" not in raw and pan.encode() not in raw


@pytest.mark.parametrize(("change", "field"), [
    ({"lines": []}, "lines"),
    ({"lines": [{"line_id": "1", "sku": "x", "quantity": 0, "unit_price": 1}]}, "lines[0].quantity"),
    ({"lines": [{"line_id": "1", "sku": "x", "quantity": 1, "unit_price": 100, "line_discount": 101}]},
     "lines[0].line_discount"),
    ({"lines": [{"line_id": "1", "sku": "x", "quantity": 1, "unit_price": 1, "colour": "red"}]}, "lines[0].colour"),
    ({"tenders": [{"kind": "iou", "amount": 1}]}, "tenders[0].kind"),
    ({"sale_discount": 10**9}, "sale_discount"),
])
async def test_bad_sales_are_refused_by_field(terminal: tuple[Terminal, EdgeConfig], change: dict[str, Any],
                                              field: str) -> None:
    t, _ = terminal
    status, data = await t.call("POST", "/v1/quote", {"sale": a_sale(**change)})
    assert 400 <= status < 500 and data["error"]["field"] == field, data
