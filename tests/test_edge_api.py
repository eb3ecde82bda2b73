"""The terminal API of a real edge: real SQLite file, real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from edge.appkeys import AUTH, STORE
from edge.config import EdgeConfig
from edge.terminals import AUTH_CACHE_SECONDS, revoke_terminal

from .edgekit import (
    Terminal,
    install_program,
    make_edge_config,
    outbox_count,
    pair,
    running_edge,
    set_confirmed,
    with_conn,
)


@pytest.fixture
def config(tmp_path: Path) -> EdgeConfig:
    config = make_edge_config(tmp_path / "edge")
    install_program(config)
    return config


@pytest.fixture
async def edge(config: EdgeConfig) -> AsyncIterator[tuple[web.Application, str, aiohttp.ClientSession]]:
    async with running_edge(config) as (app, base), aiohttp.ClientSession() as session:
        yield app, base, session


@pytest.fixture
async def terminal(edge: Any, config: EdgeConfig) -> Terminal:
    _, base, session = edge
    return await pair(session, base, config)


async def test_enroll_then_find_by_every_key(terminal: Terminal) -> None:
    created = await terminal.enroll("Hélène Dupont", phone="+1 (514) 555-0100", email=" Helene@Example.COM ",
                                    card_code="CARD-0001")
    assert created["phone"] == "+15145550100"
    assert created["email"] == "helene@example.com"
    assert created["consent"]["terms_accepted"] is True
    assert created["consent"]["channels"] == ["email"]
    assert created["balance"] == {"confirmed": 0, "pending": 0, "available": 0}
    await terminal.enroll("Helmut Kohl", phone="+15145550101")
    for query in ("phone=%2B1%20514%20555%200100", "phone=%2B1-514-555-0100", "email=HELENE@example.com",
                  "code=CARD-0001"):
        status, data = await terminal.call("GET", f"/v1/customers?{query}")
        assert status == 200, data
        assert [c["customer_id"] for c in data["customers"]] == [created["customer_id"]], query
    status, data = await terminal.call("GET", "/v1/customers?name=hel")
    assert [c["name"] for c in data["customers"]] == ["Hélène Dupont", "Helmut Kohl"]
    status, data = await terminal.call("GET", "/v1/customers?name=HELE")
    assert [c["name"] for c in data["customers"]] == ["Hélène Dupont"]
    status, data = await terminal.call("GET", "/v1/customers?name=hel&limit=1")
    assert len(data["customers"]) == 1
    status, data = await terminal.call("GET", f"/v1/customers/{created['customer_id']}")
    assert status == 200 and data["name"] == "Hélène Dupont"


async def test_pending_earns_do_not_count_as_available(terminal: Terminal, config: EdgeConfig) -> None:
    customer = await terminal.enroll("Ann", phone="5145550001")
    status, data = await terminal.earn(customer["customer_id"], "sale-1", 12_345)
    assert status == 201, data
    assert data["points"] == 123  # floor(12345 / 100) * 1
    assert data["balance"] == {"confirmed": 0, "pending": 123, "available": 0}
    status, data = await terminal.redeem(customer["customer_id"], "sale-2", 1)
    assert status == 422 and data["error"]["code"] == "insufficient_balance"
    set_confirmed(config, customer["customer_id"], 100)
    status, data = await terminal.redeem(customer["customer_id"], "sale-2", 60)
    assert status == 201, data
    assert data["balance"] == {"confirmed": 100, "pending": 63, "available": 40}
    status, data = await terminal.redeem(customer["customer_id"], "sale-3", 41)
    assert status == 422 and data["error"]["field"] == "points"
    assert data["error"]["available"] == 40


async def test_concurrent_redemptions_never_overspend(edge: Any, terminal: Terminal, config: EdgeConfig) -> None:
    app, _, _ = edge
    customer = await terminal.enroll("Bob", phone="5145550002")
    set_confirmed(config, customer["customer_id"], 100)
    results = await asyncio.gather(
        *(terminal.redeem(customer["customer_id"], f"sale-{i}", 30) for i in range(10))
    )
    assert sorted(status for status, _ in results).count(201) == 3
    assert app[STORE].customer(customer["customer_id"])["balance"]["available"] == 10


async def test_idempotent_retry_returns_first_answer(edge: Any, terminal: Terminal) -> None:
    app, base, session = edge
    customer = await terminal.enroll("Cid", phone="5145550003")
    before = outbox_count(app)
    body = {"customer_id": customer["customer_id"], "sale_id": "s-9", "amount": 500, "state": "paid"}
    first = await terminal.call("POST", "/v1/earns", body, key="key-1")
    second = await terminal.call("POST", "/v1/earns", body, key="key-1")
    assert first == second and first[0] == 201
    assert outbox_count(app) == before + 1
    status, data = await terminal.call("POST", "/v1/earns", {**body, "amount": 600}, key="key-1")
    assert status == 409 and data["error"]["code"] == "idempotency_key_reused"
    async with session.post(base + "/v1/earns", json=body, headers={
        "Authorization": f"Bearer {terminal.token}", "Idempotency-Key": "key-1"}) as response:
        assert response.headers.get("Idempotent-Replayed") == "true"
    status, data = await terminal.call("POST", "/v1/earns", body, key="key-2")
    assert status == 409 and data["error"]["code"] == "already_earned"
    assert outbox_count(app) == before + 1


async def test_void_takes_back_earned_and_returns_redeemed(terminal: Terminal, config: EdgeConfig) -> None:
    customer = await terminal.enroll("Dee", phone="5145550004")
    cid = customer["customer_id"]
    set_confirmed(config, cid, 50)
    assert (await terminal.redeem(cid, "sale-v", 20))[0] == 201
    assert (await terminal.earn(cid, "sale-v", 1_000))[0] == 201
    status, data = await terminal.call("POST", "/v1/sales/sale-v/void")
    assert status == 201, data
    assert (data["reversed_points"], data["returned_points"]) == (10, 20)
    # Pending: -20 redeem, +10 earn, +20 -10 void = 0; available counts debits only: 50 - 20 - 10.
    assert data["balance"] == {"confirmed": 50, "pending": 0, "available": 20}
    status, data = await terminal.call("POST", "/v1/sales/sale-v/void")
    assert status == 409 and data["error"]["code"] == "already_voided"
    status, data = await terminal.call("POST", "/v1/sales/nope/void")
    assert status == 404 and data["error"]["code"] == "unknown_sale"
    status, data = await terminal.earn(cid, "sale-v", 1_000)
    assert status == 409 and data["error"]["code"] == "sale_voided"


async def test_adjust_and_update_profile(terminal: Terminal, config: EdgeConfig) -> None:
    customer = await terminal.enroll("Eve", phone="5145550005", email="eve@example.com")
    cid = customer["customer_id"]
    status, data = await terminal.call("POST", "/v1/adjustments",
                                       {"customer_id": cid, "points": 25, "reason": "goodwill", "actor": "manager"})
    assert status == 201 and data["balance"]["pending"] == 25
    status, data = await terminal.call("POST", "/v1/adjustments",
                                       {"customer_id": cid, "points": -5, "reason": "fix", "actor": "manager"})
    assert status == 422  # nothing confirmed yet
    status, data = await terminal.call("PATCH", f"/v1/customers/{cid}", {"name": "Eve Adams", "email": None})
    assert status == 200, data
    assert (data["name"], data["email"], data["phone"]) == ("Eve Adams", None, "+15145550005")
    other = await terminal.enroll("Fay", phone="5145550006")
    status, data = await terminal.call("PATCH", f"/v1/customers/{other['customer_id']}", {"phone": "514 555 0005"})
    assert status == 409 and data["error"]["code"] == "phone_taken"


async def test_duplicate_phone_or_card_is_refused_at_enrollment(terminal: Terminal) -> None:
    await terminal.enroll("Gil", phone="5145550007", card_code="C7")
    status, data = await terminal.call("POST", "/v1/customers", {
        "name": "Gil 2", "phone": "514.555.0007", "consent": {"terms_accepted": True}})
    assert status == 409 and data["error"]["code"] == "phone_taken"
    status, data = await terminal.call("POST", "/v1/customers", {
        "name": "Gil 3", "card_code": "C7", "consent": {"terms_accepted": True}})
    assert status == 409 and data["error"]["field"] == "card_code"


async def test_tokens_are_required_checked_and_revocable(edge: Any, terminal: Terminal, config: EdgeConfig) -> None:
    app, base, session = edge
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": terminal.token}):
        async with session.get(base + "/v1/conflicts", headers=headers) as response:
            data = await response.json()
            assert response.status == 401, headers
            assert set(data["error"]) >= {"code", "message", "field"}
    async with session.get(base + "/healthz") as response:
        assert response.status == 200
    terminal_id = with_conn(config, lambda c: c.execute("SELECT terminal_id FROM terminals").fetchone()[0])
    assert (await terminal.call("GET", "/v1/conflicts"))[0] == 200
    with_conn(config, lambda c: revoke_terminal(c, terminal_id, int(time.time() * 1000)))
    status, _ = await terminal.call("GET", "/v1/conflicts")
    assert status == 200  # a cached token lives on for a few seconds...
    app[AUTH].clock = lambda: time.monotonic() + AUTH_CACHE_SECONDS + 1
    status, data = await terminal.call("GET", "/v1/conflicts")  # ...and no longer
    assert status == 401 and data["error"]["code"] == "bad_token"
    # The token is stored only as a hash.
    stored = with_conn(config, lambda c: c.execute("SELECT token_hash FROM terminals").fetchone()[0])
    assert terminal.token.encode() not in stored and len(stored) == 32


async def test_pairing_code_is_single_use_and_rate_limited(edge: Any, config: EdgeConfig) -> None:
    _, base, session = edge
    from edge.terminals import create_pairing_code

    code = with_conn(config, lambda c: create_pairing_code(c, int(time.time() * 1000)))
    async with session.post(base + "/v1/pair", json={"code": code.lower(), "name": "T"}) as response:
        assert response.status == 201
    async with session.post(base + "/v1/pair", json={"code": code, "name": "T"}) as response:
        assert response.status == 401
    expired = with_conn(config, lambda c: create_pairing_code(c, int(time.time() * 1000) - 11 * 60_000))
    async with session.post(base + "/v1/pair", json={"code": expired, "name": "T"}) as response:
        assert response.status == 401
    statuses = []
    for _ in range(12):
        async with session.post(base + "/v1/pair", json={"code": "AAAA-AAAA", "name": "T"}) as response:
            statuses.append(response.status)
    assert statuses[-1] == 429 and 401 in statuses


BAD_EARNS: list[tuple[str, Any, str, str | None]] = [
    ("string amount", {"amount": "100"}, "invalid_type", "amount"),
    ("float amount", {"amount": 10.5}, "invalid_type", "amount"),
    ("bool amount", {"amount": True}, "invalid_type", "amount"),
    ("negative amount", {"amount": -1}, "out_of_range", "amount"),
    ("zero amount", {"amount": 0}, "out_of_range", "amount"),
    ("huge amount", {"amount": 10**30}, "out_of_range", "amount"),
    ("unknown field", {"tip": 1}, "unknown_field", "tip"),
    ("bad state", {"state": "maybe"}, "invalid_value", "state"),
    ("open sale", {"state": "open"}, "sale_not_paid", "state"),
    ("no customer", {"customer_id": None}, "unknown_customer", "customer_id"),
    ("unknown customer", {"customer_id": "0190a7e6-1111-7111-8111-111111111111"}, "unknown_customer", "customer_id"),
    ("control chars", {"sale_id": "a\x00b"}, "invalid_text", "sale_id"),
    ("long sale id", {"sale_id": "x" * 65}, "too_long", "sale_id"),
]


@pytest.mark.parametrize(("label", "change", "code", "field"), BAD_EARNS, ids=[b[0] for b in BAD_EARNS])
async def test_bad_earn_input_is_refused_and_changes_nothing(
    edge: Any, terminal: Terminal, label: str, change: dict[str, Any], code: str, field: str | None
) -> None:
    app, _, _ = edge
    customer = await terminal.enroll("Hal", phone="5145550008")
    before = outbox_count(app)
    body = {"customer_id": customer["customer_id"], "sale_id": "s1", "amount": 100, "state": "paid", **change}
    status, data = await terminal.call("POST", "/v1/earns", body)
    assert 400 <= status < 500, (label, data)
    assert data["error"]["code"] == code, data
    assert data["error"]["field"] == field
    assert isinstance(data["error"]["message"], str) and data["error"]["message"]
    assert outbox_count(app) == before


async def test_malformed_requests_get_the_error_shape(edge: Any, terminal: Terminal) -> None:
    app, base, session = edge
    auth = {"Authorization": f"Bearer {terminal.token}", "Idempotency-Key": "k"}
    cases = [
        ("POST", "/v1/earns", {"data": b"{not json", "headers": {**auth, "Content-Type": "application/json"}}, 400),
        ("POST", "/v1/earns", {"data": b"[1, 2]", "headers": {**auth, "Content-Type": "application/json"}}, 400),
        ("POST", "/v1/earns", {"data": b"{}", "headers": {**auth, "Content-Type": "text/plain"}}, 415),
        ("POST", "/v1/earns", {"data": b"{\"a\": NaN}", "headers": {**auth, "Content-Type": "application/json"}}, 400),
        ("POST", "/v1/earns", {"data": b"x" * 70_000, "headers": {**auth, "Content-Type": "application/json"}}, 413),
        ("POST", "/v1/earns", {"json": {}, "headers": {"Authorization": auth["Authorization"]}}, 400),
        ("GET", "/v1/customers", {"headers": auth}, 400),
        ("GET", "/v1/customers?phone=1&email=a@b.c", {"headers": auth}, 400),
        ("GET", "/v1/customers?shoe=1", {"headers": auth}, 400),
        ("GET", "/v1/customers?phone=abc", {"headers": auth}, 400),
        ("GET", "/v1/customers/not-a-uuid", {"headers": auth}, 404),
        ("GET", "/v1/nothing-here", {"headers": auth}, 404),
        ("DELETE", "/v1/earns", {"headers": auth}, 405),
    ]
    before = outbox_count(app)
    for method, path, kwargs, expected in cases:
        async with session.request(method, base + path, **kwargs) as response:
            data = await response.json()
            assert response.status == expected, (method, path, data)
            assert set(data) == {"error"} and set(data["error"]) >= {"code", "message", "field"}
    assert outbox_count(app) == before


async def test_enroll_requires_consent(edge: Any, terminal: Terminal) -> None:
    app, _, _ = edge
    for consent, field in (({"terms_accepted": False}, "consent.terms_accepted"),
                           ({"channels": ["email"]}, "terms_accepted"),
                           ({"terms_accepted": True, "channels": ["fax"]}, "channels")):
        status, data = await terminal.call("POST", "/v1/customers", {"name": "Ivy", "phone": "5145550009",
                                                                      "consent": consent})
        assert status == 400 and data["error"]["field"] == field, data
    status, data = await terminal.call("POST", "/v1/customers", {"name": "Ivy", "consent": {"terms_accepted": True}})
    assert status == 400 and data["error"]["field"] == "phone"
    assert outbox_count(app) == 0


async def test_every_route_is_in_the_openapi_document(edge: Any) -> None:
    app, base, session = edge
    async with session.get(base + "/openapi.json") as response:
        doc = await response.json()
    assert doc["openapi"].startswith("3.")
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if route.method == "HEAD":
            continue
        assert path in doc["paths"], path
        assert route.method.lower() in doc["paths"][path], (route.method, path)


async def test_earn_without_program_is_refused(tmp_path: Path) -> None:
    config = make_edge_config(tmp_path / "bare")
    async with running_edge(config) as (_, base), aiohttp.ClientSession() as session:
        terminal = await pair(session, base, config)
        customer = await terminal.enroll("Jo", phone="5145550010")
        status, data = await terminal.earn(customer["customer_id"], "s", 100)
        assert status == 503 and data["error"]["code"] == "no_program"


async def test_status_page_is_local_and_has_no_customer_data(edge: Any, terminal: Terminal) -> None:
    _, base, session = edge
    await terminal.enroll("Secret Name", phone="5145550099", email="secret@example.com")
    async with session.get(base + "/status") as response:
        page = await response.text()
        assert response.status == 200
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert "store-1" in page and "Outbox depth" in page
    for secret in ("Secret Name", "5145550099", "secret@example.com"):
        assert secret not in page


async def test_a_body_arriving_in_pieces_is_read_whole(edge: Any, terminal: Terminal) -> None:
    _, base, _ = edge
    customer = await terminal.enroll("Kim", phone="5145550011")
    body = json.dumps({"customer_id": customer["customer_id"], "sale_id": "slow", "amount": 900,
                       "state": "paid"}).encode()
    port = int(base.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST /v1/earns HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {terminal.token}\r\n"
        f"Idempotency-Key: slow-1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n".encode() + body[:20]
    )
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.write(body[20:])
    await writer.drain()
    response = await reader.read()
    writer.close()
    assert response.startswith(b"HTTP/1.1 201"), response[:200]


async def test_metrics_on_the_main_port_are_local_and_carry_no_customer_data(edge: Any, terminal: Terminal) -> None:
    _, base, session = edge
    await terminal.enroll("Metric Mo", phone="5145550777")
    async with session.get(base + "/metrics") as response:
        text = await response.text()
        assert response.status == 200
    assert "loyalty_edge_outbox_depth 1.0" in text
    assert "Metric Mo" not in text and "5145550777" not in text
