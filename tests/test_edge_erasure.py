"""Erasure reaching the edges (real edge stores and sync tasks, a real cloud on 127.0.0.1, both
ledger backends): each edge of the brand scrubs the profile, its sale bases, the stored
answers and its outbox and batches, keeps the balance, and truncates its WAL; an edge that was
offline with the person's data queued (in a cut batch and still unbatched) sends none of it
again after the erasure, and the cloud keeps none of it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge import sale_writes, writes
from edge.store import EdgeStore
from protocol import Consent, Earn, Enroll, UpdateProfile, uuid7
from protocol.earning import Customer as RulesCustomer

from . import cloudkit as k
from .linkkit import LinkedEdge, linked_edge
from .test_cloud_erasure import card_sale, everything

NAME, PHONE, EMAIL, CARD, TOKEN = "Yorick Plimsoll", "+33612340001", "yorick.p@example.net", "YP-CARD-5", "tok_yp_777"
LATE_PHONE, LATE_EMAIL = "+33612340099", "yorick.late@example.net"
SECRETS = (NAME, PHONE, EMAIL, CARD, TOKEN, LATE_PHONE, LATE_EMAIL)


@pytest.fixture
async def cloud(tmp_path: Path, backend: k.Backend) -> AsyncIterator[k.Cloud]:
    async with k.running_cloud(tmp_path, backend) as cloud:
        yield cloud


def now() -> int:
    return int(time.time() * 1000)


async def write(edge: LinkedEdge, key: str, action: writes.Action) -> tuple[int, dict[str, object]]:
    status, body, _ = await edge.store.write(writes.idempotent(edge.terminal_id, key, b"h", now(), action))
    return status, json.loads(body)


def update(edge: LinkedEdge, customer_id: str, **fields: object) -> UpdateProfile:
    values: dict[str, object] = {"name": None, "phone": None, "email": None, "card_code": None, "clear": ()}
    values.update(fields)
    at = now()
    return UpdateProfile(op_id=uuid7(at), at=at, terminal_id=edge.terminal_id, customer_id=customer_id,
                         **values)  # type: ignore[arg-type]


def raw(path: Path) -> bytes:
    """The database file, its WAL and its shared-memory index, as bytes on disk."""
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists())


def wal_size(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0


async def pull(edge: LinkedEdge) -> None:
    await edge.sync.pull()


async def test_every_edge_scrubs_and_an_offline_edge_resends_nothing(tmp_path: Path, cloud: k.Cloud) -> None:
    e1 = await linked_edge(tmp_path, cloud, "store-e1", seed=1)
    e2 = await linked_edge(tmp_path, cloud, "store-e2", seed=2)
    try:
        at = now()
        zelda = uuid7(at)
        enroll = Enroll(op_id=uuid7(at), at=at, terminal_id=e1.terminal_id, customer_id=zelda, name=NAME,
                        phone=PHONE, email=EMAIL, card_code=CARD, consent=Consent(True, ("email",), "pos", None, at))
        status, answer = await write(e1, "k-enroll", writes.enroll(enroll))
        assert status == 201 and answer["email"] == EMAIL
        bob = await e1.enroll("Bob Staysafe", "+33655550000")
        earn = Earn(op_id=uuid7(now()), at=now(), terminal_id=e1.terminal_id, customer_id=zelda, sale_id="s-1",
                    amount=1000, points=10, program_version=1, sale=card_sale("s-1", TOKEN))
        assert (await write(e1, "k-earn", sale_writes.earn(earn, RulesCustomer())))[0] == 201
        await e1.sync_until_drained()
        await pull(e2)
        assert e2.store.customer(zelda)["phone"] == PHONE

        # Store e2 loses the internet; its till changes the profile twice: one change is cut
        # into a signed batch (sent, never acknowledged), the other waits unbatched.
        e2.link.up = False
        assert (await write(e2, "k-u1", writes.update_profile(update(e2, zelda, phone=LATE_PHONE))))[0] == 200
        await e2.sync.attempt_once()
        assert e2.store.read(lambda c: c.execute("SELECT COUNT(*) FROM batches WHERE acked_at IS NULL").fetchone())
        assert (await write(e2, "k-u2", writes.update_profile(update(e2, zelda, email=LATE_EMAIL))))[0] == 200

        assert LATE_PHONE.encode() in await asyncio.to_thread(raw, e2.store.path)  # what the scan must not find
        assert TOKEN.encode() in await asyncio.to_thread(raw, e1.store.path)
        record = await cloud.storage.erase_customer(k.BRAND, zelda, "Privacy desk", "request 77", k.now_ms())
        balance = (await cloud.storage.get_customer(zelda)).balance  # type: ignore[union-attr]
        await pull(e1)

        # Back online, e2 hears of the erasure before it sends: the unbatched change goes, the
        # cut batch keeps its signed bytes (the cloud may hold them) until its ack.
        e2.link.heal()
        await pull(e2)
        assert e2.store.read(lambda c: c.execute(
            "SELECT COUNT(*) FROM outbox WHERE customer_id = ? AND batch_seq IS NULL", (zelda,)).fetchone()) == (0,)
        envelope = e2.store.read(lambda c: c.execute(
            "SELECT envelope FROM batches WHERE acked_at IS NULL").fetchone()[0])
        assert LATE_PHONE.encode() in envelope
        await e2.sync_until_drained()
        await pull(e2)

        for edge in (e1, e2):
            profile = edge.store.customer(zelda)
            assert (profile["name"], profile["phone"], profile["email"], profile["card_code"]) == ("", None, None,
                                                                                                  None)
            assert profile["balance"]["confirmed"] == balance and profile["consent"] is None
            erased_at, version = edge.store.read(lambda c: c.execute(
                "SELECT erased_at, version FROM customers WHERE customer_id = ?", (zelda,)).fetchone())
            assert erased_at is not None and version >= record.version
            assert edge.store.customer(bob)["name"] == "Bob Staysafe"
        # A replayed answer is the scrubbed one; the edge still knows it answered.
        status, answer = await write(e1, "k-enroll", writes.enroll(enroll))
        assert status == 201 and answer["name"] is None and answer["email"] is None
        basis = e1.store.read(lambda c: c.execute("SELECT basis FROM sales WHERE sale_id = 's-1'").fetchone()[0])
        assert TOKEN.encode() not in basis and b"latte" in basis

        for edge in (e1, e2):
            path = edge.store.path
            await edge.close()
            data = await asyncio.to_thread(raw, path)
            for secret in SECRETS:
                assert secret.encode() not in data, (edge.store_id, secret)
            assert b"Bob Staysafe" in data
            assert await asyncio.to_thread(wal_size, path) == 0
        text = await everything(cloud)
        for secret in SECRETS:
            assert secret not in text, secret
        # The cut batch reached the cloud after the erasure: applied without its profile fields.
        late = await cloud.backend.rows(cloud.db_path, "SELECT note FROM ops WHERE store_id = 'store-e2'"
                                        " AND kind = 'update_profile'")
        assert ("customer erased: profile fields dropped",) in late
        stored = await cloud.storage.get_customer(zelda)
        assert stored is not None and (stored.phone, stored.email) == (None, None)
    finally:
        for edge in (e1, e2):
            await edge.close()


async def test_a_reopened_store_keeps_scrubbing(tmp_path: Path, cloud: k.Cloud) -> None:
    """A later balance change of an erased customer moves the balance only (no second scrub)."""
    edge = await linked_edge(tmp_path, cloud, "store-e3", seed=3)
    try:
        cid = await edge.enroll(NAME, PHONE)
        await edge.earn(cid, "s-9", 5000)
        await edge.sync_until_drained()
        await cloud.storage.erase_customer(k.BRAND, cid, "Desk", "request 78", k.now_ms())
        await pull(edge)
        await cloud.storage.adjust_balance(k.BRAND, cid, 7, "goodwill", "Desk", k.now_ms())
        await pull(edge)
        profile = edge.store.customer(cid)
        assert profile["name"] == "" and profile["balance"]["confirmed"] == 57
        path = edge.store.path
        await edge.close()
        reopened = EdgeStore(path)
        await reopened.open()
        try:
            assert reopened.customer(cid)["phone"] is None
        finally:
            await reopened.close()
        assert NAME.encode() not in await asyncio.to_thread(raw, path)
    finally:
        await edge.close()
