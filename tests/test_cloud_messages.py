"""The message outbox: rows written with the batch that causes them, once per event,
sent by the dispatcher on a consented channel only, retried with backoff, claimed
by one dispatcher at a time. Every test with a ledger runs on both backends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloud.dispatcher import Dispatcher, RetryPolicy
from cloud.engagement_model import ConsentRecord, MessageStatus
from cloud.messages import batch_effects, points_expiring_message
from cloud.model import BatchOutcome, CustomerState, LedgerEntry, OpRecord
from cloud.senders import FileSender, Senders, SmsGatewaySender
from cloud.storage import Storage
from protocol import Program

from . import cloudkit as k
from .msgkit import GATEWAY_KEY, FakeGateway, enroll_with, fake_gateway, mailbox

REWARDS = json.dumps({"rewards": [
    {"reward_id": "coffee", "name": "Free coffee", "points": 50, "kind": "free_item", "sku": "coffee"},
    {"reward_id": "cake", "name": "Cake", "points": 80, "kind": "free_item", "sku": "cake"},
]})
EMAIL = "ada.lovelace@example.org"
PHONE = "+33611223344"


@pytest.fixture
async def cloud(tmp_path: Path, backend: k.Backend) -> AsyncIterator[k.Cloud]:
    async with k.running_cloud(tmp_path, backend) as running:
        await running.storage.set_program(k.BRAND, "Acme Rewards", 1, 100, k.now_ms(), REWARDS)
        yield running


def file_senders(path: Path) -> Senders:
    sender = FileSender(path)
    return Senders(sender, sender)


async def statuses(storage: Storage) -> dict[str, tuple[str, str | None]]:
    return {m.dedupe_key: (m.status, m.channel) for m in await storage.list_messages()}


# ---- the pure mapping


def test_batch_effects_welcome_earned_and_the_rewards_an_earn_reaches() -> None:
    cid = k.any_uuid()
    consent = '{"at":1790000000000,"channels":["email"],"source":"pos","staff":"s1","terms_accepted":true}'
    customer = CustomerState(cid, "acme", "Ada", None, EMAIL, None, consent, 85, 9, "store-a", 1, 2)

    def op(op_id: str, kind: str, status: str = "applied") -> OpRecord:
        return OpRecord(op_id, b"", "store-a", 1, kind, k.TERMINAL, cid, status, None, 0, 1, None, 5, 6)

    outcome = BatchOutcome(
        results=(), balances=(), customers=(customer,), sales=(), conflicts=(), counter=9,
        ops=(op("e0", "enroll"), op("e1", "earn"), op("e2", "earn"), op("e3", "redeem"), op("e4", "earn")),
        entries=(LedgerEntry(cid, "e1", "store-a", "s1", "earn", 40, 10),
                 LedgerEntry(cid, "e2", "store-a", "s2", "earn", 45, 11),   # 40 -> 85 crosses 50 and 80
                 LedgerEntry(cid, "e3", "store-a", "s3", "redeem", -50, 12),
                 LedgerEntry(cid, "e4", "store-a", "s4", "earn", 50, 13)),  # 35 -> 85 crosses both again
    )
    program = Program("acme", 2, "P", 1, 100, REWARDS)
    effects = batch_effects(outcome, program)
    keys = [m.dedupe_key for m in effects.messages]
    assert keys == [f"welcome:{cid}", "earned:e1", "earned:e2", "reward:e2", "earned:e4", "reward:e4"]
    reward = json.loads(effects.messages[3].data)
    assert reward == {"balance": 85, "rewards": [{"name": "Free coffee", "points": 50}, {"name": "Cake", "points": 80}]}
    assert json.loads(effects.messages[1].data) == {"balance": 40, "points": 40}
    assert all(EMAIL not in m.data for m in effects.messages)
    (consent_row,) = effects.consents
    assert (consent_row.channel, consent_row.granted, consent_row.source, consent_row.terminal_id,
            consent_row.staff) == ("email", True, "pos", k.TERMINAL, "s1")
    # Without a program (or rewards), earns still say what they earned.
    assert [m.dedupe_key for m in batch_effects(outcome, None).messages] == keys[:3] + keys[4:5]


# ---- written with the batch, once


async def test_a_batch_writes_its_messages_once_however_often_it_is_resent(cloud: k.Cloud) -> None:
    store = cloud.stores["store-a"]
    cid = k.any_uuid()
    earn = k.earn(cid, "s1", 60)
    data, batch_hash = store.batch([enroll_with(cid, email=EMAIL, channels=("email",)), earn])
    assert (await cloud.post("/v1/batches", data))[0] == 200
    store.advance(batch_hash)
    assert (await cloud.post("/v1/batches", data))[0] == 200  # the resend: stored ack, nothing new
    await cloud.send(store, [earn, k.earn(cid, "s2", 5)])  # the same op again in a later batch
    keys = [m.dedupe_key for m in await cloud.storage.list_messages()]
    assert sorted(keys) == sorted([f"welcome:{cid}", f"earned:{earn.op_id}", f"reward:{earn.op_id}",
                                   keys[-1]]) and keys[-1].startswith("earned:")
    rows = await cloud.backend.rows(cloud.db_path, "SELECT * FROM messages")
    assert not [row for row in rows if any(EMAIL in str(value) or "Ada" in str(value) for value in row)]
    consents = await cloud.storage.consent_history(cid)
    assert [(c.channel, c.granted, c.source, c.staff, c.terminal_id) for c in consents] == [
        ("email", True, "pos", "staff-7", k.TERMINAL)]


async def test_a_refused_batch_writes_no_message(cloud: k.Cloud) -> None:
    store = cloud.stores["store-a"]
    before = await cloud.snapshot()
    data, _ = store.batch([enroll_with(k.any_uuid(), email=EMAIL, channels=("email",))], seq=3)
    assert (await cloud.post("/v1/batches", data))[0] == 409
    assert await cloud.snapshot() == before


async def test_points_expiring_notice_is_one_row_per_customer_and_day(cloud: k.Cloud) -> None:
    cid = k.any_uuid()
    await cloud.send(cloud.stores["store-a"], [enroll_with(cid, email=EMAIL, channels=("email",))])
    expires = 1_800_000_000_000
    first = points_expiring_message(k.BRAND, cid, 40, expires, k.now_ms())
    again = points_expiring_message(k.BRAND, cid, 40, expires + 3_600_000, k.now_ms())
    assert await cloud.storage.add_messages([first]) == 1
    assert await cloud.storage.add_messages([again]) == 0  # same day of expiry: the notice exists
    (row,) = [m for m in await cloud.storage.list_messages() if m.kind == "points_expiring"]
    assert row.dedupe_key == first.dedupe_key and json.loads(row.data) == {"points": 40, "expires_at": expires}


# ---- sending


async def test_dispatcher_sends_on_the_consented_channel_and_skips_after_a_withdrawal(
        cloud: k.Cloud, tmp_path: Path) -> None:
    store = cloud.stores["store-a"]
    both, phone_only, silent = k.any_uuid(), k.any_uuid(), k.any_uuid()
    await cloud.send(store, [
        enroll_with(both, email=EMAIL, phone=PHONE, channels=("email", "phone")),
        enroll_with(phone_only, email="p@example.org", phone="+33699887766", channels=("phone",)),
        enroll_with(silent, email="s@example.org", channels=()),
    ])
    outbox = tmp_path / "outbox.jsonl"
    dispatcher = Dispatcher(cloud.storage, file_senders(outbox), portal_url=lambda b: f"https://x.test/portal/{b}")
    assert await dispatcher.tick(k.now_ms()) == 3
    sent = {line["to"]: line for line in mailbox(outbox)}
    assert set(sent) == {EMAIL, "+33699887766"}
    assert sent[EMAIL]["channel"] == "email" and sent["+33699887766"]["channel"] == "phone"
    assert "Welcome to Acme Coffee" in sent[EMAIL]["subject"] and "https://x.test/portal/acme" in sent[EMAIL]["text"]
    assert await statuses(cloud.storage) == {
        f"welcome:{both}": ("sent", "email"), f"welcome:{phone_only}": ("sent", "phone"),
        f"welcome:{silent}": ("skipped", None)}

    # The customer withdraws email in the portal: the next message goes by SMS; withdrawing SMS too skips it.
    now = k.now_ms()
    await cloud.storage.record_consent(ConsentRecord(k.BRAND, both, "email", False, now, "portal", None, None))
    await cloud.send(store, [k.earn(both, "s1", 10)])
    assert await dispatcher.tick(k.now_ms()) == 1
    assert mailbox(outbox)[-1]["to"] == PHONE and "10 points" in mailbox(outbox)[-1]["text"]
    await cloud.storage.record_consent(ConsentRecord(k.BRAND, both, "phone", False, now + 1, "portal", None, None))
    earn = k.earn(both, "s2", 10)
    await cloud.send(store, [earn])
    lines = len(mailbox(outbox))
    assert await dispatcher.tick(k.now_ms()) == 1
    assert len(mailbox(outbox)) == lines  # nothing sent
    (skipped,) = [m for m in await cloud.storage.list_messages() if m.dedupe_key == f"earned:{earn.op_id}"]
    assert (skipped.status, skipped.last_error, skipped.finished_at is not None) == ("skipped", "no_consent", True)
    assert await dispatcher.tick(k.now_ms()) == 0  # a skipped message is kept, never claimed again


async def test_gateway_failures_are_retried_with_backoff_then_sent_once(cloud: k.Cloud, tmp_path: Path) -> None:
    cid = k.any_uuid()
    await cloud.send(cloud.stores["store-a"], [enroll_with(cid, phone=PHONE, channels=("phone",))])
    async with fake_gateway(FakeGateway(script=[503, 429])) as gateway:
        sms = SmsGatewaySender(gateway.url, GATEWAY_KEY, timeout=5)
        retry = RetryPolicy(max_attempts=4, first_delay_ms=1000, max_delay_ms=10_000)
        dispatcher = Dispatcher(cloud.storage, Senders(FileSender(tmp_path / "mail.jsonl"), sms), retry=retry)
        try:
            now = k.now_ms()
            assert await dispatcher.tick(now) == 1
            (row,) = await cloud.storage.list_messages()
            assert (row.status, row.attempts, row.last_error, row.next_attempt_at) == ("pending", 1, "gateway 503",
                                                                                     now + 1000)
            assert await dispatcher.tick(now + 999) == 0  # not due yet
            assert await dispatcher.tick(now + 1000) == 1
            (row,) = await cloud.storage.list_messages()
            assert (row.attempts, row.last_error, row.next_attempt_at) == (2, "gateway 429", now + 3000)
            assert await dispatcher.tick(now + 3000) == 1
            (row,) = await cloud.storage.list_messages()
            assert (row.status, row.channel, row.provider_ref, row.attempts) == ("sent", "phone", "sms-1", 3)
        finally:
            await sms.close()
    keys = {r["headers"]["Idempotency-Key"] for r in gateway.requests}
    assert len(keys) == 1 and len(gateway.delivered) == 1  # every try carried the same key
    assert gateway.requests[-1]["body"]["to"] == PHONE


async def test_a_permanent_refusal_or_the_last_try_fails_the_message(cloud: k.Cloud, tmp_path: Path) -> None:
    first, second = k.any_uuid(), k.any_uuid()
    await cloud.send(cloud.stores["store-a"], [enroll_with(first, phone=PHONE, channels=("phone",))])
    async with fake_gateway(FakeGateway(script=[400, 500, 500])) as gateway:
        sms = SmsGatewaySender(gateway.url, GATEWAY_KEY, timeout=5)
        retry = RetryPolicy(max_attempts=2, first_delay_ms=10, max_delay_ms=10)
        dispatcher = Dispatcher(cloud.storage, Senders(sms, sms), retry=retry)
        try:
            now = k.now_ms()
            await dispatcher.tick(now)
            assert await statuses(cloud.storage) == {f"welcome:{first}": ("failed", "phone")}
            await cloud.send(cloud.stores["store-a"], [enroll_with(second, phone="+33655443322", channels=("phone",))])
            await dispatcher.tick(now + 100)
            await dispatcher.tick(now + 200)
            assert (await statuses(cloud.storage))[f"welcome:{second}"] == ("failed", "phone")
            assert await dispatcher.tick(now + 10_000) == 0
        finally:
            await sms.close()
    assert gateway.delivered == {}


async def test_a_lost_claim_is_taken_over_after_its_lease_and_sent_once_by_key(cloud: k.Cloud,
                                                                              tmp_path: Path) -> None:
    cid = k.any_uuid()
    await cloud.send(cloud.stores["store-a"], [enroll_with(cid, email=EMAIL, channels=("email",))])
    now = k.now_ms()
    # A dispatcher claims the message, sends it, and dies before recording the result.
    (claimed,) = await cloud.storage.claim_messages(now, 10, 60_000, "dead-dispatcher")
    outbox = tmp_path / "outbox.jsonl"
    dead = Dispatcher(cloud.storage, file_senders(outbox), lease_ms=60_000)
    contact = (await cloud.storage.message_contacts([cid]))[cid]
    assert (await dead._deliver(claimed, contact, now))[1] is True  # handed over to the sender
    assert len(mailbox(outbox)) == 1
    survivor = Dispatcher(cloud.storage, file_senders(outbox), lease_ms=60_000)
    assert await survivor.tick(now + 59_999) == 0  # still leased
    assert await survivor.tick(now + 60_000) == 1  # the lease ran out: taken over, sent again...
    assert len(mailbox(outbox)) == 1  # ...with the same key, so the mailbox holds it once
    (row,) = await cloud.storage.list_messages()
    assert (row.status, row.attempts) == ("sent", 2)
    from cloud.engagement_model import MessageResult
    late = MessageResult(MessageStatus.SENT, now, "email")
    assert await cloud.storage.finish_messages("dead-dispatcher", [(row.message_id, late)]) == 0


async def test_two_dispatchers_never_send_the_same_message(cloud: k.Cloud, tmp_path: Path,
                                                           backend: k.Backend) -> None:
    ops = []
    for n in range(40):
        ops.append(enroll_with(k.any_uuid(), email=f"c{n}@example.org", channels=("email",)))
    await cloud.send(cloud.stores["store-a"], ops)
    second_storage = backend.storage(tmp_path / "cloud")  # another connection (pool), as another process has
    await second_storage.open(k.now_ms())
    try:
        one = Dispatcher(cloud.storage, file_senders(tmp_path / "one.jsonl"), batch_size=3)
        two = Dispatcher(second_storage, file_senders(tmp_path / "two.jsonl"), batch_size=3)

        async def drain(dispatcher: Dispatcher) -> None:
            for _ in range(100):
                if await dispatcher.tick(k.now_ms()) == 0:
                    return
                await asyncio.sleep(0)

        await asyncio.gather(drain(one), drain(two))
    finally:
        await second_storage.close()
    first, second = mailbox(tmp_path / "one.jsonl"), mailbox(tmp_path / "two.jsonl")
    keys = [line["idempotency_key"] for line in first + second]
    assert len(keys) == 40 and len(set(keys)) == 40
    assert first and second  # both took part
    assert {s for s, _ in (await statuses(cloud.storage)).values()} == {"sent"}
