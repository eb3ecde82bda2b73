"""Edge and cloud in one process, over a link that drops, duplicates, delays
and reorders: the ledger still applies every op exactly once and both sides
converge."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cloud.worker import Worker
from protocol import OpStatus

from . import cloudkit
from .linkkit import LinkedEdge, linked_edge


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[cloudkit.Cloud]:
    async with cloudkit.running_cloud(tmp_path) as running:
        yield running


def cloud_ops(cloud: cloudkit.Cloud) -> dict[str, tuple[str, str | None]]:
    conn = sqlite3.connect(f"file:{cloud.db_path}?mode=ro", uri=True)
    try:
        return {row[0]: (row[1], row[2]) for row in conn.execute("SELECT op_id, status, code FROM ops")}
    finally:
        conn.close()


def ledger_entries_per_op(cloud: cloudkit.Cloud) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{cloud.db_path}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT op_id, COUNT(*) FROM ledger_entries GROUP BY op_id").fetchall())
    finally:
        conn.close()


def edge_op_ids(edge: LinkedEdge) -> set[str]:
    return {row[0] for row in edge.store.read(lambda c: c.execute("SELECT op_id FROM outbox").fetchall())}


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_flaky_link_still_applies_every_op_exactly_once(tmp_path: Path, cloud: cloudkit.Cloud, seed: int) -> None:
    edge = await linked_edge(tmp_path, cloud, "store-e", seed)
    link = edge.link
    link.drop_request, link.drop_reply, link.duplicate, link.replay_old, link.max_delay = 0.3, 0.3, 0.3, 0.3, 0.01
    rng = random.Random(seed)
    try:
        customers = [await edge.enroll(f"Customer {i}", f"+1555000{i:04d}") for i in range(5)]
        for round_ in range(12):
            for i in range(rng.randint(1, 6)):
                await edge.earn(rng.choice(customers), f"sale-{round_}-{i}", rng.randint(100, 50_000))
            await edge.sync.attempt_once()
        link.heal()
        await edge.sync_until_drained()
        ops = cloud_ops(cloud)
        mine = edge_op_ids(edge)
        assert mine <= set(ops), "an op the edge queued never reached the ledger"
        assert all(status == OpStatus.APPLIED.value for op_id, (status, _) in ops.items() if op_id in mine)
        assert all(count == 1 for count in ledger_entries_per_op(cloud).values()), "an op was applied twice"
        assert await cloud.storage.audit_balances() == []
        cloud_balances = cloudkit.balances_in_db(cloud.db_path)
        for customer_id in customers:
            balance = edge.balance(customer_id)
            assert balance["pending"] == 0
            assert balance["confirmed"] == cloud_balances[customer_id]
        assert link.faults > 5 and edge.sync.status.batches_acked > 1
    finally:
        await edge.close()


async def test_two_offline_edges_spending_the_same_points(tmp_path: Path, cloud: cloudkit.Cloud) -> None:
    a = await linked_edge(tmp_path, cloud, "store-x", 10)
    b = await linked_edge(tmp_path, cloud, "store-y", 11)
    try:
        customer = await a.enroll("Shared", "+15550001111")
        assert (await a.earn(customer, "s-1", 10_000))[0] == 201  # 100 points
        await a.sync_until_drained()
        await b.sync_until_drained()  # b learns the customer and the confirmed balance
        assert a.balance(customer) == b.balance(customer) == {"confirmed": 100, "pending": 0, "available": 100}
        a.link.up = b.link.up = False  # the internet is down in both stores
        assert (await a.redeem(customer, "s-a", 80))[0] == 201
        assert (await b.redeem(customer, "s-b", 80))[0] == 201
        await a.sync.attempt_once()
        await b.sync.attempt_once()
        assert a.sync.status.attempt == b.sync.status.attempt == 1  # both failed, both backing off
        a.link.heal()
        b.link.heal()
        await a.sync_until_drained()
        await b.sync_until_drained()
        await a.sync_until_drained()  # a pulls what b's refusal left behind
        assert a.balance(customer) == b.balance(customer) == {"confirmed": 20, "pending": 0, "available": 20}
        conflicts = b.store.conflicts()
        assert [(c["kind"], c["points"], c["code"]) for c in conflicts] == [("redeem", 80, "insufficient_balance")]
        assert a.store.conflicts() == []
        cloud_conflicts = await cloud.storage.list_conflicts("store-y")
        assert len(cloud_conflicts) == 1
        assert cloudkit.balances_in_db(cloud.db_path)[customer] == 20
    finally:
        await a.close()
        await b.close()


async def test_backoff_grows_while_the_cloud_is_away(tmp_path: Path, cloud: cloudkit.Cloud) -> None:
    edge = await linked_edge(tmp_path, cloud, "store-q", 5)
    try:
        edge.link.up = False
        delays = [await edge.sync.attempt_once() for _ in range(6)]
        ceilings = [edge.sync.backoff.base * 2**n for n in range(1, 7)]
        assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
        assert edge.sync.status.reachable is False and "dropped" in (edge.sync.status.last_error or "")
        edge.link.heal()
        assert await edge.sync.attempt_once() == edge.sync.interval
        assert edge.sync.status.attempt == 0 and edge.sync.status.reachable
    finally:
        await edge.close()


async def test_full_size_batches_and_acks_cross_the_real_client(tmp_path: Path, cloud: cloudkit.Cloud) -> None:
    """Acks of 1,000 ops are larger than one TCP segment: the client reads them whole."""
    edge = await linked_edge(tmp_path, cloud, "store-big", 7)
    edge.sync.batch_size = 1000
    try:
        customer = await edge.enroll("Big Batch", "+15550009999")
        for n in range(2_400):
            await edge.earn(customer, f"big-{n}", 1_000)
        await edge.sync_until_drained(rounds=5)
        assert edge.sync.status.batches_acked == 3
        assert edge.balance(customer) == {"confirmed": 24_000, "pending": 0, "available": 24_000}
    finally:
        await edge.close()


async def test_pruning_keeps_the_chain_and_forgets_old_rows(tmp_path: Path, cloud: cloudkit.Cloud) -> None:
    from edge.outbox import ACKED_KEEP_MS, prune

    edge = await linked_edge(tmp_path, cloud, "store-p", 9)
    try:
        customer = await edge.enroll("Old Timer", "+15550007777")
        await edge.earn(customer, "old-1", 500)
        await edge.sync_until_drained()
        await edge.earn(customer, "old-2", 500)
        await edge.sync_until_drained()
        later = edge.now() + ACKED_KEEP_MS + 1
        pruned = await edge.store.write(prune(later))
        assert pruned == {"idempotency_keys": 3, "ops": 3, "batches": 1, "claims": 0}
        assert edge.balance(customer)["confirmed"] == 10  # balances are not ops: nothing lost
        await edge.earn(customer, "new-1", 500)
        await edge.sync_until_drained()  # the next batch still chains to the kept newest one
        assert edge.balance(customer) == {"confirmed": 15, "pending": 0, "available": 15}
    finally:
        await edge.close()


async def test_a_batch_prepared_from_a_stale_outbox_is_not_stored(tmp_path: Path, cloud: cloudkit.Cloud) -> None:
    from edge.db import connect
    from edge.outbox import NewBatch, prepare_batch, store_batch

    edge = await linked_edge(tmp_path, cloud, "store-r", 3)
    try:
        customer = await edge.enroll("Race", "+15550004444")
        await edge.earn(customer, "r-1", 500)
        conn = connect(edge.store.path, readonly=True)
        try:
            first = prepare_batch(conn, edge.sync.identity, edge.now(), 1000)
            second = prepare_batch(conn, edge.sync.identity, edge.now(), 1000)
        finally:
            conn.close()
        assert isinstance(first, NewBatch) and isinstance(second, NewBatch)
        assert await edge.store.write(store_batch(first, edge.now())) is True
        assert await edge.store.write(store_batch(second, edge.now())) is False  # its ops are batched already
        await edge.sync_until_drained()
        assert edge.sync.status.batches_acked == 1
    finally:
        await edge.close()


async def test_program_settings_reach_the_edge_and_drive_its_rules(tmp_path: Path, cloud: cloudkit.Cloud) -> None:
    from protocol.earning import Customer, compute_earn
    from protocol.rules import earning_rules
    from protocol.sale import Sale, SaleLine, SaleState, Tender, TenderKind

    settings = '{"promotions": [{"kind": "spend_x", "min_spend": 5000, "bonus": 25}]}'
    await cloud.storage.set_program(cloudkit.BRAND, "With a promotion", 1, 100, cloudkit.now_ms(), settings)
    edge = await linked_edge(tmp_path, cloud, "store-s", 4)
    try:
        await edge.sync_until_drained()
        program = edge.store.program()
        assert program is not None and program.version == 2
        sale = Sale("s", (SaleLine("1", "coat", None, 1, 6_000, 0, 0),), 0, (Tender(TenderKind.CASH, 6_000),),
                    SaleState.PAID)
        assert compute_earn(sale, earning_rules(program), Customer(), edge.now()).total == 60 + 25
    finally:
        await edge.close()


class Recorder:
    """The edge's transport, noting every envelope it sends."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sent: list[tuple[str, bytes]] = []

    async def post_envelope(self, path: str, envelope: bytes) -> bytes:
        self.sent.append((path, envelope))
        reply: bytes = await self.inner.post_envelope(path, envelope)
        return reply


async def test_a_batch_answered_202_is_sent_again_soon_without_backing_off(tmp_path: Path) -> None:
    """The reconciler runs elsewhere and is slow: the cloud stores the batch and answers 202;
    the edge resends the same bytes after the hint, not after a backoff, and takes the ack."""
    async with cloudkit.running_cloud(tmp_path, workers=0, ack_wait=0.05) as cloud:
        edge = await linked_edge(tmp_path, cloud, "store-p", 5)
        recorder = edge.sync.client = Recorder(edge.link)
        try:
            customer = await edge.enroll("Pat", "+15550002222")
            await edge.earn(customer, "sale-1", 1200)
            delay = await edge.sync.attempt_once()
            status = edge.sync.status
            assert 0.05 <= delay <= 0.25 and status.attempt == 0 and status.last_error is None
            assert status.batches_pending == 1 and edge.unacked() == 2
            assert await cloud.storage.inbox_depth() == 1 and cloudkit.balances_in_db(cloud.db_path) == {}
            assert await Worker(cloud.storage, cloud.key, cloud.clock).drain() == 1  # a reconciler process
            await edge.sync.attempt_once()
            assert edge.unacked() == 0 and status.batches_acked == 1 and status.attempt == 0
            batches = [envelope for path, envelope in recorder.sent if path == "/v1/batches"]
            assert len(batches) == 2 and batches[0] == batches[1]  # the same bytes, sent again
            assert edge.balance(customer)["confirmed"] == 12
        finally:
            await edge.close()
