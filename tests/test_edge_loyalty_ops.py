"""Refunds, redemptions, groups and opt-out, and expiry at a real edge
(real SQLite file, real HTTP on 127.0.0.1): bad input gets a 4xx naming the
field and changes nothing; expired points are never available offline."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from edge import outbox, sale_writes, writes
from edge.appkeys import STORE
from edge.config import EdgeConfig
from edge.db import connect
from edge.keyfile import load_key
from edge.outbox import Identity, NewBatch, apply_downlink, prepare_batch
from edge.sale_input import parse_sale
from protocol import Consent, CustomerRecord, Downlink, Earn, Enroll, Program, key_id_for, uuid7
from protocol.earning import Customer as RulesCustomer
from protocol.expiry import DAY_MS

from .bothkit import FixedClock
from .edgekit import Terminal, install_program, make_edge_config, pair, running_edge, set_confirmed, with_conn
from .test_rules_domain import NOW

PROGRAM = Program("demo", 4, "Demo points", 1, 100, json.dumps({
    "zero_groups": ["staff"], "refund_policy": "clamp", "rewards": [
        {"reward_id": "coffee", "name": "Free coffee", "points": 50, "kind": "free_item", "sku": "coffee"},
        {"reward_id": "five-off", "name": "$5 off", "points": 100, "kind": "fixed_discount", "amount": 500}]}))
SALE = {"sale_id": "s-1", "state": "paid", "lines": [
    {"line_id": "coat", "sku": "coat", "quantity": 1, "unit_price": 6_000},
    {"line_id": "hats", "sku": "hat", "quantity": 2, "unit_price": 1_000}],
    "tenders": [{"kind": "card", "amount": 8_000, "card_token": "tok_1"}]}


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


@pytest.fixture
def config(tmp_path: Path) -> EdgeConfig:
    config = make_edge_config(tmp_path / "edge")
    install_program(config, PROGRAM)
    return config


@pytest.fixture
async def edge(config: EdgeConfig, clock: FixedClock) -> AsyncIterator[tuple[web.Application, Terminal]]:
    async with running_edge(config, clock) as (app, base), aiohttp.ClientSession() as session:
        yield app, await pair(session, base, config)


def state(app: web.Application) -> tuple[Any, ...]:
    """Everything a refused write must leave as it was."""
    return app[STORE].read(lambda c: (
        c.execute("SELECT op_id, delta, debit FROM outbox ORDER BY seq").fetchall(),
        c.execute("SELECT * FROM sales ORDER BY sale_id").fetchall(),
        c.execute("SELECT customer_id, groups, opted_out FROM customers ORDER BY customer_id").fetchall(),
    ))


async def earned_sale(terminal: Terminal, config: EdgeConfig, confirmed: int = 0) -> str:
    customer = await terminal.enroll("Rita", phone="+15145550900")
    cid = customer["customer_id"]
    set_confirmed(config, cid, confirmed)
    status, data = await terminal.call("POST", "/v1/earns", {"customer_id": cid, "sale": SALE})
    assert status == 201 and data["points"] == 80, data
    return str(cid)


@pytest.mark.parametrize(("body", "status", "code", "field"), [
    ({"lines": [{"line_id": "scarf", "quantity": 1}]}, 422, "unknown_line", "lines[0].line_id"),
    ({"lines": [{"line_id": "hats", "quantity": 3}]}, 422, "exceeds_sold", "lines[0].quantity"),
    ({"lines": [{"line_id": "hats", "quantity": 1}, {"line_id": "hats", "quantity": 1}]}, 400, "duplicate_line",
     "lines[1].line_id"),
    ({"lines": [{"line_id": "hats", "quantity": 0}]}, 400, "out_of_range", "lines[0].quantity"),
    ({"lines": [{"line_id": "hats"}]}, 400, "missing", "lines[0].quantity"),
    ({"lines": []}, 400, "out_of_range", "lines"),
    ({"lines": "hats"}, 400, "invalid_type", "lines"),
    ({}, 400, "missing", "lines"),
])
async def test_a_bad_refund_names_its_field_and_changes_nothing(
    edge: tuple[web.Application, Terminal], config: EdgeConfig, body: dict[str, Any], status: int, code: str,
    field: str,
) -> None:
    app, terminal = edge
    await earned_sale(terminal, config)
    before = state(app)
    got, data = await terminal.call("POST", "/v1/sales/s-1/refunds", body)
    assert (got, data["error"]["code"], data["error"]["field"]) == (status, code, field), data
    assert state(app) == before


async def test_a_line_is_refunded_once_and_a_retry_replays(edge: tuple[web.Application, Terminal],
                                                           config: EdgeConfig) -> None:
    app, terminal = edge
    cid = await earned_sale(terminal, config)
    body = {"lines": [{"line_id": "hats", "quantity": 2}]}
    first = await terminal.call("POST", "/v1/sales/s-1/refunds", body, key="refund-1")
    assert first[0] == 201 and first[1]["reversed_points"] == 20
    assert await terminal.call("POST", "/v1/sales/s-1/refunds", body, key="refund-1") == first  # replayed
    before = state(app)
    status, data = await terminal.call("POST", "/v1/sales/s-1/refunds", body, key="refund-2")
    assert (status, data["error"]["code"], data["error"]["field"]) == (409, "already_refunded", "lines[0].line_id")
    assert state(app) == before
    assert (await terminal.call("GET", f"/v1/customers/{cid}"))[1]["balance"]["pending"] == 60


async def test_refunds_of_what_cannot_be_refunded(edge: tuple[web.Application, Terminal], config: EdgeConfig) -> None:
    app, terminal = edge
    cid = await earned_sale(terminal, config)
    one_line = {"lines": [{"line_id": "coat", "quantity": 1}]}
    status, data = await terminal.call("POST", "/v1/sales/nope/refunds", one_line)
    assert (status, data["error"]["code"]) == (404, "unknown_sale")
    assert (await terminal.earn(cid, "by-amount", 5_000))[0] == 201  # no lines recorded
    status, data = await terminal.call("POST", "/v1/sales/by-amount/refunds", one_line)
    assert (status, data["error"]["code"], data["error"]["field"]) == (422, "no_sale_lines", "lines")
    assert (await terminal.call("POST", "/v1/sales/s-1/void"))[0] == 201
    before = state(app)
    status, data = await terminal.call("POST", "/v1/sales/s-1/refunds", one_line)
    assert (status, data["error"]["code"]) == (409, "sale_voided")
    assert state(app) == before


@pytest.mark.parametrize(("body", "status", "code", "field"), [
    ({"rewards": [{"reward_id": "tea", "count": 1}]}, 422, "unknown_reward", "rewards[0].reward_id"),
    ({"rewards": [{"reward_id": "coffee", "count": 0}]}, 400, "out_of_range", "rewards[0].count"),
    ({"rewards": [{"reward_id": "coffee", "count": 1}, {"reward_id": "coffee", "count": 1}]}, 400,
     "invalid_value", "rewards[1].reward_id"),
    ({"rewards": [{"reward_id": "coffee", "count": 5}]}, 422, "insufficient_balance", "rewards"),
    ({"amount": 10}, 422, "wrong_program_kind", "amount"),
    ({"points": 10, "amount": 10}, 400, "missing", "points"),
    ({}, 400, "missing", "rewards"),
])
async def test_a_bad_redemption_names_its_field_and_changes_nothing(
    edge: tuple[web.Application, Terminal], config: EdgeConfig, body: dict[str, Any], status: int, code: str,
    field: str,
) -> None:
    app, terminal = edge
    customer = await terminal.enroll("Rex", phone="+15145550901")
    set_confirmed(config, customer["customer_id"], 200)
    before = state(app)
    got, data = await terminal.call("POST", "/v1/redemptions",
                                    {"customer_id": customer["customer_id"], "sale_id": "r-1", **body})
    assert (got, data["error"]["code"], data["error"]["field"]) == (status, code, field), data
    assert state(app) == before


async def test_rewards_on_a_currency_program_are_refused(edge: tuple[web.Application, Terminal],
                                                         config: EdgeConfig) -> None:
    app, terminal = edge
    install_program(config, Program("demo", 5, "Dollars", 1, 20, '{"kind": "currency"}'))
    app[STORE].forget_program()
    customer = await terminal.enroll("Cara", phone="+15145550902")
    set_confirmed(config, customer["customer_id"], 1_000)
    status, data = await terminal.call("POST", "/v1/redemptions", {
        "customer_id": customer["customer_id"], "sale_id": "c-1", "rewards": [{"reward_id": "coffee", "count": 1}]})
    assert (status, data["error"]["code"], data["error"]["field"]) == (422, "wrong_program_kind", "rewards")
    status, data = await terminal.call("POST", "/v1/redemptions", {
        "customer_id": customer["customer_id"], "sale_id": "c-1", "amount": 250})
    assert status == 201 and data["points"] == 250 and data["balance"]["available"] == 750


async def test_groups_and_opt_out_decide_what_a_customer_earns(edge: tuple[web.Application, Terminal]) -> None:
    app, terminal = edge
    staff = await terminal.enroll("Stan", phone="+15145550903", groups=["staff"])
    assert staff["groups"] == ["staff"] and staff["opted_out"] is False
    cid = staff["customer_id"]
    status, quote = await terminal.call("POST", "/v1/quote", {"sale": SALE, "customer_id": cid})
    assert (status, quote["points"], quote["reason"]) == (200, 0, "zero_group")
    status, data = await terminal.call("PATCH", f"/v1/customers/{cid}", {"groups": []})
    assert status == 200 and data["groups"] == []
    assert (await terminal.call("POST", "/v1/quote", {"sale": SALE, "customer_id": cid}))[1]["points"] == 80
    status, data = await terminal.call("PATCH", f"/v1/customers/{cid}", {"opted_out": True})
    assert status == 200 and data["opted_out"] is True
    status, data = await terminal.earn(cid, "amount-only", 5_000)
    assert (status, data["points"]) == (201, 0)  # the ratio is a rule too: an opted-out customer earns nothing
    before = state(app)
    for body, field in (({"groups": None}, "groups"), ({"opted_out": "yes"}, "opted_out"),
                        ({"groups": ["a\n"]}, "groups"), ({"groups": ["x"] * 21}, "groups")):
        status, data = await terminal.call("PATCH", f"/v1/customers/{cid}", body)
        assert status == 400 and data["error"]["field"] == field, data
    assert state(app) == before


async def test_expired_points_are_never_available_offline(edge: tuple[web.Application, Terminal],
                                                          config: EdgeConfig, clock: FixedClock) -> None:
    app, terminal = edge
    customer = await terminal.enroll("Eve", phone="+15145550904")
    cid = customer["customer_id"]
    # The cloud says: 100 points, 30 expiring in 10 days, 50 in 40 days (it has not run expiry since).
    record = CustomerRecord(cid, "Eve", customer["phone"], None, None, 100, 7, (), False,
                            ((NOW + 10 * DAY_MS, 30), (NOW + 40 * DAY_MS, 50)))
    downlink = Downlink("store-1", bytes(16), 0, 7, False, NOW, (record,), None, ())
    assert await app[STORE].write(apply_downlink(downlink, NOW))
    profile = (await terminal.call("GET", f"/v1/customers/{cid}"))[1]
    assert (profile["balance"]["available"], profile["expiring_soon"]) == (100, 30)
    clock.at_ms = NOW + 11 * DAY_MS  # still offline: the cloud has not expired anything
    profile = (await terminal.call("GET", f"/v1/customers/{cid}"))[1]
    assert (profile["balance"]["confirmed"], profile["balance"]["available"], profile["expiring_soon"]) == (
        100, 70, 50)
    status, quote = await terminal.call("POST", "/v1/quote", {"sale": SALE, "customer_id": cid})
    assert (quote["available"], quote["expiring_soon"]) == (70, 50)
    status, data = await terminal.redeem(cid, "late", 71)
    assert (status, data["error"]["code"], data["error"]["available"]) == (422, "insufficient_balance", 70)
    assert (await terminal.redeem(cid, "late", 70))[0] == 201


def test_a_batch_is_cut_before_it_outgrows_its_envelope(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An earn carries its sale, so ops differ in size: a batch stops at a byte budget, never below one op."""
    config = make_edge_config(tmp_path / "edge")
    now = NOW
    enroll = Enroll(op_id=uuid7(now), at=now, terminal_id=uuid7(now), customer_id=uuid7(now), name="Big Basket",
                    phone="+15145550905", email=None, card_code=None, consent=Consent(True, (), "pos", None, now))
    sale = parse_sale({**SALE, "lines": [{"line_id": str(n), "sku": f"sku-{n}", "quantity": 1, "unit_price": 100}
                                         for n in range(80)],
                       "tenders": [{"kind": "cash", "amount": 8_000}]})

    def queue(conn: Any) -> None:
        writes.enroll(enroll)(conn)
        for n in range(6):
            earn = Earn(op_id=uuid7(now), at=now, terminal_id=enroll.terminal_id, customer_id=enroll.customer_id,
                        sale_id=f"big-{n}", amount=sale.total, points=80, program_version=4,
                        sale=dataclasses.replace(sale, sale_id=f"big-{n}"))
            sale_writes.earn(earn, RulesCustomer())(conn)

    with_conn(config, queue)
    key = load_key(config.key_path)
    identity = Identity("store-1", "0f0e0d0c-0b0a-4908-8706-050403020100", key_id_for(key.public_key()), key)
    conn = connect(config.db_path, readonly=True)
    try:
        sizes = [len(body) for (body,) in conn.execute("SELECT body FROM outbox ORDER BY seq")]
        assert min(sizes[1:]) > 2_000  # every earn with its 80 lines
        monkeypatch.setattr(outbox, "MAX_BATCH_BODY_BYTES", sizes[0] + sizes[1] + sizes[2] + 10)
        cut = prepare_batch(conn, identity, now, 1000)
        assert isinstance(cut, NewBatch) and cut.batch.op_count == 3
        monkeypatch.setattr(outbox, "MAX_BATCH_BODY_BYTES", 10)
        alone = prepare_batch(conn, identity, now, 1000)
        assert isinstance(alone, NewBatch) and alone.batch.op_count == 1  # one op always goes, whatever its size
    finally:
        conn.close()
