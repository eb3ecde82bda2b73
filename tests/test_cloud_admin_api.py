"""The admin API on a real cloud server (127.0.0.1), on both ledger backends:
operator tokens and their brand scope, program versions set over HTTP and
sent down to the edges, and bad input refused with nothing changed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cloud.admin_api import hash_token, new_token
from cloud.model import OperatorRecord
from protocol import uuid7

from . import cloudkit as k


@pytest.fixture
async def cloud(tmp_path: Any, backend: k.Backend) -> AsyncIterator[k.Cloud]:
    async with k.running_cloud(tmp_path, backend) as cloud:
        yield cloud


async def make_operator(cloud: k.Cloud, name: str, brand_id: str | None = None) -> tuple[OperatorRecord, str]:
    token = new_token()
    now = k.now_ms()
    operator = await cloud.storage.add_operator(uuid7(now), name, brand_id, hash_token(token), now)
    return operator, token


async def call(cloud: k.Cloud, method: str, path: str, token: str | None, body: Any = None,
               **headers: str) -> tuple[int, Any]:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    resp = await cloud.client.request(method, path, data=data, headers=headers)
    assert resp.content_type == "application/json", await resp.text()
    payload = await resp.json()
    if resp.status >= 400:
        assert set(payload) == {"error"} and {"code", "message", "field"} <= set(payload["error"]), payload
    return resp.status, payload


PROGRAM = {"name": "Acme Plus", "points_per_unit": 2, "unit_amount": 100,
           "settings": {"kind": "points", "rewards": [
               {"reward_id": "coffee", "name": "Free coffee", "points": 50, "kind": "free_item", "sku": "coffee"}]}}


async def test_tokens_are_required_and_revocation_is_immediate(cloud: k.Cloud) -> None:
    operator, token = await make_operator(cloud, "Ops")
    for bad in (None, "nope", "lec_" + "x" * 43, new_token()):
        status, body = await call(cloud, "GET", "/v1/admin/brands", bad)
        assert (status, body["error"]["code"], body["error"]["field"]) == (401, "unauthorized", "Authorization")
    status, body = await call(cloud, "GET", "/v1/admin/brands", token)
    assert status == 200 and [b["brand_id"] for b in body["brands"]] == [k.BRAND, k.OTHER_BRAND]
    (stored,) = await cloud.backend.rows(cloud.db_path, "SELECT token_hash FROM operators")
    assert bytes(stored[0]) == hash_token(token) and token.encode() not in bytes(stored[0])

    await cloud.storage.revoke_operator(operator.operator_id, k.now_ms())
    status, body = await call(cloud, "GET", "/v1/admin/brands", token)
    assert (status, body["error"]["code"]) == (401, "unauthorized")


async def test_a_brand_operator_sees_and_changes_its_brand_only(cloud: k.Cloud) -> None:
    _, merchant = await make_operator(cloud, "Acme accountant", k.BRAND)
    status, body = await call(cloud, "GET", "/v1/admin/brands", merchant)
    assert [b["brand_id"] for b in body["brands"]] == [k.BRAND]
    await cloud.storage.revoke_store("store-b", "stolen till", k.now_ms())
    status, body = await call(cloud, "GET", "/v1/admin/stores", merchant)
    assert sorted(s["store_id"] for s in body["stores"]) == ["store-a", "store-b"]
    revoked = {s["store_id"]: s["revoke_reason"] for s in body["stores"]}
    assert revoked == {"store-a": None, "store-b": "stolen till"}
    before = await cloud.snapshot()
    status, body = await call(cloud, "PUT", f"/v1/admin/brands/{k.OTHER_BRAND}/program", merchant, PROGRAM)
    assert (status, body["error"]["code"]) == (403, "forbidden_brand")
    status, body = await call(cloud, "GET", f"/v1/admin/brands/{k.OTHER_BRAND}/program", merchant)
    assert status == 403
    assert await cloud.snapshot() == before


async def test_a_program_set_over_http_reaches_the_edges(cloud: k.Cloud) -> None:
    _, token = await make_operator(cloud, "Acme owner", k.BRAND)
    status, body = await call(cloud, "PUT", f"/v1/admin/brands/{k.BRAND}/program", token, PROGRAM)
    assert status == 201, body
    assert (body["version"], body["points_per_unit"], body["settings"]["rewards"][0]["reward_id"]) == (2, 2, "coffee")
    status, current = await call(cloud, "GET", f"/v1/admin/brands/{k.BRAND}/program", token)
    assert current == body
    downlink, _ = await cloud.pull(cloud.stores["store-a"])
    assert downlink.program is not None
    assert (downlink.program.version, downlink.program.points_per_unit) == (2, 2)
    assert downlink.program.options.rewards[0].name == "Free coffee"


@pytest.mark.parametrize(("body", "status", "code", "field"), [
    ({**PROGRAM, "settings": {"rewards": [
        {"reward_id": f"r{i}", "name": f"R{i}", "points": 10, "kind": "free_item", "sku": "t"} for i in range(16)]}},
     400, "too_many_rewards", "settings.rewards"),
    ({**PROGRAM, "settings": {"rewards": [
        {"reward_id": "r", "name": "x" * 101, "points": 10, "kind": "free_item", "sku": "t"}]}},
     400, "too_long", "settings.rewards[0].name"),
    ({**PROGRAM, "points_per_unit": -1}, 400, "out_of_range", "points_per_unit"),
    ({**PROGRAM, "points_per_unit": True}, 400, "invalid_type", "points_per_unit"),
    ({**PROGRAM, "unit_amount": 0}, 400, "out_of_range", "unit_amount"),
    ({**PROGRAM, "colour": "red"}, 400, "unknown_field", "colour"),
    ({"name": "No ratio"}, 400, "missing", "points_per_unit"),
    ({**PROGRAM, "settings": {"rewardz": []}}, 400, "unknown_field", "settings.rewardz"),
    ({**PROGRAM, "settings": []}, 400, "invalid_type", "settings"),
    (b"{not json", 400, "invalid_json", None),
    (b"[1, 2]", 400, "invalid_json", None),
    (b"{" + b" " * 70_000 + b"}", 413, "too_large", None),
])
async def test_bad_program_input_changes_nothing(cloud: k.Cloud, body: Any, status: int, code: str,
                                                 field: str | None) -> None:
    _, token = await make_operator(cloud, "Ops")
    before = await cloud.snapshot()
    got, answer = await call(cloud, "PUT", f"/v1/admin/brands/{k.BRAND}/program", token, body)
    assert (got, answer["error"]["code"], answer["error"]["field"]) == (status, code, field), answer
    assert await cloud.snapshot() == before


async def test_unknown_brand_and_wrong_media_type(cloud: k.Cloud) -> None:
    _, token = await make_operator(cloud, "Ops")
    status, body = await call(cloud, "PUT", "/v1/admin/brands/nobody/program", token, PROGRAM)
    assert (status, body["error"]["field"]) == (404, "brand_id")
    status, body = await call(cloud, "GET", "/v1/admin/brands/Not%20A%20Slug/program", token)
    assert (status, body["error"]["code"]) == (404, "unknown_brand")
    status, body = await call(cloud, "PUT", f"/v1/admin/brands/{k.BRAND}/program", token,
                              json.dumps(PROGRAM).encode(), **{"Content-Type": "text/plain"})
    assert (status, body["error"]["code"]) == (415, "unsupported_media_type")
