"""Erasure in the cloud, on both ledger backends: the admin route and the CLI scrub the
profile, its sales, stored batches, sessions and queued messages, keep the ledger's
amounts on the anonymous id, send the erasure down, and refuse bad requests with nothing
changed; a late op from an offline edge never brings the personal data back."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloud.engagement_model import OtpChallenge, PortalSession
from cloud.otp import PortalKeys, contact_hashes
from cloud.periodic import Context, audit_chains
from protocol import Earn, OpStatus
from protocol.sale import Sale, sale_from_wire

from . import cloudkit as k
from .test_cloud_admin_api import call, make_operator

NAME, PHONE, EMAIL, CARD, TOKEN = "Zelda Quuxworth", "+33611112222", "zelda.q@example.org", "CARD-ZQ-77", "tok_zq_991"
NEW_PHONE, NEW_NAME = "+33677778888", "Zelda Reborn"
SECRETS = (NAME, PHONE, EMAIL, CARD, TOKEN, NEW_PHONE, NEW_NAME)


@pytest.fixture
async def cloud(tmp_path: Path, backend: k.Backend) -> AsyncIterator[k.Cloud]:
    async with k.running_cloud(tmp_path, backend) as cloud:
        yield cloud


def card_sale(sale_id: str, token: str) -> Sale:
    return sale_from_wire({
        "sale_id": sale_id, "sale_discount": 0, "state": "paid",
        "lines": [{"line_id": "l1", "sku": "latte", "category": None, "quantity": 1, "unit_price": 1000,
                   "line_discount": 0, "tax": 0}],
        "tenders": [{"kind": "card", "amount": 1000, "card_token": token}],
    })


def card_earn(customer_id: str, sale_id: str, token: str) -> Earn:
    return Earn(op_id=k.new_id(), at=k.now_ms(), terminal_id=k.TERMINAL, customer_id=customer_id, sale_id=sale_id,
                amount=1000, points=10, program_version=1, sale=card_sale(sale_id, token))


async def everything(cloud: k.Cloud) -> str:
    """Every row of every table, as one text (blobs decoded leniently), and on SQLite the raw
    bytes of the database file and its WAL: what a scan for the erased values reads."""
    tables = [r[0] for r in await cloud.backend.rows(cloud.db_path, (
        "SELECT name FROM sqlite_master WHERE type = 'table'" if cloud.backend.dsn is None else
        f"SELECT tablename FROM pg_tables WHERE schemaname = '{cloud.backend.schema}'"))]
    parts = []
    for table in tables:
        for row in await cloud.backend.rows(cloud.db_path, f"SELECT * FROM {table}"):
            parts += [bytes(v).decode("utf-8", "replace") if isinstance(v, bytes | memoryview) else str(v)
                      for v in row]
    if cloud.backend.dsn is None:
        parts += await asyncio.to_thread(raw_files, cloud.db_path)
    return "\n".join(parts)


def raw_files(db_path: Path) -> list[str]:
    found = []
    for suffix in ("", "-wal"):
        path = Path(str(db_path) + suffix)
        if path.exists():
            found.append(path.read_bytes().decode("utf-8", "replace"))
    return found


async def enrolled(cloud: k.Cloud) -> tuple[str, str]:
    """Zelda (to erase) and Bob (to keep), each with a card earn; Zelda's profile updated once."""
    zelda, bob = k.any_uuid(), k.any_uuid()
    store = cloud.stores["store-a"]
    enroll = k.enroll(zelda, name=NAME, phone=PHONE)
    enroll = dataclasses.replace(enroll, email=EMAIL, card_code=CARD)
    await cloud.send(store, [enroll, k.enroll(bob, name="Bob Keeper", phone="+33655554444"),
                             card_earn(zelda, "s-z1", TOKEN), card_earn(bob, "s-b1", "tok_bob_1")])
    await cloud.send(store, [k.update(zelda, email=EMAIL.replace("zelda", "zq")), k.adjust(zelda, 5)])
    now = k.now_ms()
    await cloud.storage.create_session(PortalSession("h" * 64, k.BRAND, zelda, now, now + 3_600_000))
    return zelda, bob


async def test_the_admin_route_erases_and_keeps_the_ledger_anonymous(cloud: k.Cloud) -> None:
    zelda, bob = await enrolled(cloud)
    _, token = await make_operator(cloud, "Privacy desk", k.BRAND)
    balance = (await cloud.storage.get_customer(zelda)).balance  # type: ignore[union-attr]
    entries = [(e.kind, e.points) for e in await cloud.storage.customer_entries(zelda)]
    assert NAME in await everything(cloud)

    status, body = await call(cloud, "POST", f"/v1/admin/brands/{k.BRAND}/customers/{zelda}/erasure", token,
                              {"reason": "GDPR request #4411"})
    assert status == 200, body
    assert body["actor"] == "Privacy desk" and body["reason"] == "GDPR request #4411"
    assert body["scrubbed"]["batches"] == 2 and body["scrubbed"]["sales"] == 1
    assert body["scrubbed"]["portal_sessions"] == 1 and body["scrubbed"]["adjustments"] == 0

    after = await cloud.storage.get_customer(zelda)
    assert after is not None
    assert (after.name, after.phone, after.email, after.card_code) == ("", None, None, None)
    assert after.balance == balance and after.version == body["version"]
    assert json.loads(after.consent).keys() == {"source", "at", "erased_at"}
    assert [(e.kind, e.points) for e in await cloud.storage.customer_entries(zelda)] == entries
    rows = await cloud.backend.rows(cloud.db_path, f"SELECT erased_at FROM customers WHERE customer_id = '{zelda}'")
    assert rows == [(body["erased_at"],)]
    audit = await cloud.backend.rows(cloud.db_path, "SELECT customer_id, actor, reason, version FROM erasures")
    assert audit == [(zelda, "Privacy desk", "GDPR request #4411", body["version"])]
    assert await cloud.backend.rows(cloud.db_path, f"SELECT COUNT(*) FROM messages WHERE customer_id = '{zelda}'"
                                    " AND status = 'pending'") == [(0,)]

    text = await everything(cloud)
    for secret in SECRETS:
        assert secret not in text, secret
    assert "Bob Keeper" in text and "tok_bob_1" in text  # the others are untouched

    downlink, _ = await cloud.pull(cloud.stores["store-b"])
    record = next(c for c in downlink.customers if c.customer_id == zelda)
    assert record.erased and (record.name, record.phone, record.email, record.card_code) == ("", None, None, None)
    assert record.balance == balance and not next(c for c in downlink.customers if c.customer_id == bob).erased

    # The chain audit still holds: a redacted body is checked by its link.
    result = await audit_chains(Context(cloud.storage, k.now_ms(), 24.0, True))
    assert result.ok, result.detail


async def test_bad_erasures_change_nothing(cloud: k.Cloud) -> None:
    zelda, _ = await enrolled(cloud)
    _, token = await make_operator(cloud, "Ops")
    _, other = await make_operator(cloud, "Zeta desk", k.OTHER_BRAND)
    path = f"/v1/admin/brands/{k.BRAND}/customers/{zelda}/erasure"
    before = await cloud.snapshot()
    for body, field in (({}, "reason"), ({"reason": ""}, "reason"), ({"reason": 7}, "reason"),
                        ({"reason": "x", "nope": 1}, "nope"), ({"reason": "x", "actor": " "}, "actor")):
        status, answer = await call(cloud, "POST", path, token, body)
        assert status == 400 and answer["error"]["field"] == field, (body, answer)
    status, answer = await call(cloud, "POST", f"/v1/admin/brands/{k.BRAND}/customers/{k.any_uuid()}/erasure",
                                token, {"reason": "x"})
    assert (status, answer["error"]["code"]) == (404, "unknown_customer")
    status, answer = await call(cloud, "POST", f"/v1/admin/brands/{k.OTHER_BRAND}/customers/{zelda}/erasure",
                                token, {"reason": "x"})
    assert (status, answer["error"]["code"]) == (404, "unknown_customer")
    status, answer = await call(cloud, "POST", path, other, {"reason": "x"})
    assert (status, answer["error"]["code"]) == (403, "forbidden_brand")
    assert await cloud.snapshot() == before

    assert (await call(cloud, "POST", path, token, {"reason": "request 1"}))[0] == 200
    again = await cloud.snapshot()
    status, answer = await call(cloud, "POST", path, token, {"reason": "request 2"})
    assert (status, answer["error"]["code"]) == (409, "already_erased")
    assert await cloud.snapshot() == again


async def test_late_ops_of_an_offline_edge_keep_their_amounts_only(cloud: k.Cloud) -> None:
    zelda, _ = await enrolled(cloud)
    store_a, store_b = cloud.stores["store-a"], cloud.stores["store-b"]
    record = await cloud.storage.erase_customer(k.BRAND, zelda, "Ops", "request 9", k.now_ms())
    balance = (await cloud.storage.get_customer(zelda)).balance  # type: ignore[union-attr]

    # Store b was offline since before the erasure: its queue still holds the old data.
    late_enroll = k.enroll(zelda, name=NEW_NAME, phone=NEW_PHONE)
    ack, _ = await cloud.send(store_b, [
        k.update(zelda, name=NEW_NAME, phone=NEW_PHONE, groups=("staff",)),
        card_earn(zelda, "s-z2", TOKEN),
        late_enroll,
    ])
    statuses = [(r.status, r.code) for r in ack.results]
    assert statuses == [(OpStatus.APPLIED, None), (OpStatus.APPLIED, None), (OpStatus.REFUSED, "customer_exists")]
    after = await cloud.storage.get_customer(zelda)
    assert after is not None
    assert (after.name, after.phone, after.email, after.card_code) == ("", None, None, None)
    assert json.loads(after.groups) == ["staff"] and after.balance == balance + 10
    assert after.version > record.version
    notes = await cloud.backend.rows(cloud.db_path, f"SELECT kind, note FROM ops WHERE customer_id = '{zelda}'"
                                     " AND kind = 'update_profile' AND note IS NOT NULL")
    assert notes == [("update_profile", "customer erased: profile fields dropped")]

    text = await everything(cloud)
    for secret in SECRETS:
        assert secret not in text, secret
    downlink, _ = await cloud.pull(store_a)
    assert next(c for c in downlink.customers if c.customer_id == zelda).erased

    result = await audit_chains(Context(cloud.storage, k.now_ms(), 24.0, True))
    assert result.ok, result.detail


def test_the_cli_erases_and_prints_no_personal_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cloud.cli import main

    data = tmp_path / "cloud"
    assert main(["init", "--data", str(data)]) == 0
    assert main(["brand", "add", "acme", "--name", "Acme", "--data", str(data)]) == 0
    conn = sqlite3.connect(data / "cloud.sqlite3")
    cid, now = k.any_uuid(), k.now_ms()
    conn.execute(
        "INSERT INTO customers (customer_id, brand_id, name, phone, email, card_code, consent, balance, version,"
        " enrolled_store, created_at, updated_at) VALUES (?, 'acme', ?, ?, ?, NULL, '{}', 0, 1, 's', ?, ?)",
        (cid, NAME, PHONE, EMAIL, now, now))
    conn.commit()
    conn.close()
    assert main(["customer", "erase", "acme", cid, "--actor", "Desk", "--reason", " ", "--data", str(data)]) == 2
    assert main(["customer", "erase", "acme", k.any_uuid(), "--actor", "Desk", "--reason", "r",
                 "--data", str(data)]) == 2
    capsys.readouterr()
    assert main(["customer", "erase", "acme", cid, "--actor", "Desk", "--reason", "ticket 12",
                 "--data", str(data)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["customer_id"] == cid and printed["actor"] == "Desk" and printed["scrubbed"]["customers"] == 1
    raw = (data / "cloud.sqlite3").read_bytes()
    wal = data / "cloud.sqlite3-wal"
    raw += wal.read_bytes() if wal.exists() else b""
    for secret in (NAME, PHONE, EMAIL):
        assert secret.encode() not in raw
    assert main(["customer", "erase", "acme", cid, "--actor", "Desk", "--reason", "again",
                 "--data", str(data)]) == 2


async def test_portal_codes_and_counters_filed_under_the_contacts_go(cloud: k.Cloud) -> None:
    zelda, _ = await enrolled(cloud)
    keys = PortalKeys(b"s" * 32)
    mine = contact_hashes(keys, k.BRAND, PHONE, EMAIL)
    theirs = contact_hashes(keys, k.BRAND, "+33699990000", None)
    now = k.now_ms()
    async with cloud.storage.portal_tx() as tx:
        for n, contact in enumerate([*mine, *theirs]):
            await tx.save_challenge(OtpChallenge(f"c{n}", k.BRAND, contact, "x" * 64, now, now + 600_000, 0, None))
            await tx.count(f"sent:contact:{contact}", now, 1)
        await tx.count("sent:address:" + keys.address_hash("127.0.0.1"), now, 1)
    record = await cloud.storage.erase_customer(k.BRAND, zelda, "Desk", "request 5", now, contact_hashes=mine)
    assert record.scrubbed["otp_challenges"] == 2 and record.scrubbed["portal_limits"] == 2
    left = await cloud.backend.rows(cloud.db_path, "SELECT contact_hash FROM otp_challenges")
    assert left == [(theirs[0],)]
    counters = {r[0] for r in await cloud.backend.rows(cloud.db_path, "SELECT key FROM portal_limits")}
    assert counters == {f"sent:contact:{theirs[0]}", "sent:address:" + keys.address_hash("127.0.0.1")}
