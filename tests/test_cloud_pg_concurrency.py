"""PostgreSQL under concurrency: real parallel transactions on separate pools,
through the storage layer, the sync service and the reconciler (no mocks).

The ``ledger`` fixture lays the cloud out as separate processes would: one
pool receives batches (``serve``), and two reconcilers, each with a pool of
its own, apply them (``loyalty-cloud reconcile --workers 2``). The balance
check stays exact because a batch locks the customer rows it names
(``FOR UPDATE``, sorted) before it reads their balances: a second batch
spending the same points waits, then reads the balance the first committed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from cloud.handoff import Handoff
from cloud.keys import CloudKey
from cloud.model import BatchCommit, versioned
from cloud.pg_storage import PgStorage
from cloud.reconciler import reconcile
from cloud.service import SyncService
from cloud.worker import Applied, Worker
from protocol import Ack, OpStatus, open_ack

from . import cloudkit as k

APPLIED, REFUSED = OpStatus.APPLIED, OpStatus.REFUSED
KEY = CloudKey.from_seed(b"\x09" * 32)


@dataclass
class Ledger:
    storage: PgStorage  # the receiving side's pool
    service: SyncService
    stores: dict[str, k.StoreSigner]
    statements: list[tuple[str, str]]  # (reconciler, statement) in the order they were sent
    app_name: str
    # (reconciler, batch, time.monotonic() after its commit), in commit order
    applied: list[tuple[str, Applied, float]] = field(default_factory=list)

    async def send(self, store: str, ops: list[k.Op]) -> Ack:
        signer = self.stores[store]
        data, batch_hash = signer.batch(ops)
        ack = open_ack(await self.service.submit_batch(data), KEY.public)
        signer.advance(batch_hash)
        return ack

    def clear(self) -> None:
        self.statements.clear()
        self.applied.clear()


@pytest.fixture
async def ledger(pg: k.Backend) -> AsyncIterator[Ledger]:
    assert pg.dsn is not None and pg.schema is not None
    # application_name lets the test find its own sessions in pg_stat_activity
    dsn = f"{pg.dsn}&application_name={pg.schema}"
    storage = PgStorage(dsn, min_size=1, max_size=4)
    await storage.open(k.now_ms())
    statements: list[tuple[str, str]] = []

    def logger(name: str) -> Callable[[str], None]:
        return lambda sql: statements.append((name, sql))

    pools = {name: PgStorage(dsn, min_size=1, max_size=2, on_query=logger(name)) for name in ("w1", "w2")}
    tasks: list[asyncio.Task[None]] = []
    workers: list[Worker] = []
    try:
        for pool in pools.values():
            await pool.open(k.now_ms())
        stores: dict[str, k.StoreSigner] = {}
        await k.seed(storage, stores)
        handoff = Handoff(storage)
        ledger = Ledger(storage, SyncService(storage, KEY, k.now_ms, handoff=handoff, ack_wait=20), stores,
                        statements, pg.schema)

        def report(name: str) -> Callable[[Applied], None]:
            def applied(done: Applied) -> None:
                ledger.applied.append((name, done, time.monotonic()))
                handoff.applied(done.store_id, done.seq, done.ack)
            return applied

        for name, pool in pools.items():
            workers.append(Worker(pool, KEY, k.now_ms, on_applied=report(name)))
            tasks.append(asyncio.create_task(workers[-1].run(handoff.work, poll_interval=0.02)))
        yield ledger
    finally:
        for worker in workers:
            worker.stop()
        await asyncio.gather(*tasks)
        for pool in pools.values():
            await pool.close()
        await storage.close()


def overlapped(applied: list[tuple[str, Applied, float]]) -> bool:
    """True if two reconcilers' batch transactions were open at the same moment."""
    spans = [(name, end - done.seconds, end) for name, done, end in applied]
    return any(a != b and start_a < end_b and start_b < end_a
               for a, start_a, end_a in spans for b, start_b, end_b in spans)


async def test_two_stores_spending_the_same_points_at_once_exactly_one_applies(ledger: Ledger) -> None:
    for i in range(3):  # bounded: three rounds, each a fresh customer
        cid = k.any_uuid()
        await ledger.send("store-a", [k.enroll(cid), k.earn(cid, f"sale-{i}", 100)])
        spend_a, spend_b = k.redeem(cid, f"sale-a{i}", 80), k.redeem(cid, f"sale-b{i}", 80)
        ledger.clear()
        # Hold the brand's counter so that neither batch can finish before the other has started:
        # one reconciler then waits for the counter with the customer locked, the other for the customer.
        async with ledger.storage.batch_tx() as tx:
            await tx.take_versions(k.BRAND, 0)
            both = asyncio.gather(ledger.send("store-a", [spend_a]), ledger.send("store-b", [spend_b]))
            assert await wait_for_lock_wait(ledger, at_least=2) == 2
        ack_a, ack_b = await asyncio.wait_for(both, 20)
        # the two reconcilers really ran their transactions at the same time
        assert overlapped(ledger.applied) and {name for name, _, _ in ledger.applied} == {"w1", "w2"}
        outcomes = sorted([(ack_a.results[0].status, ack_a.results[0].code),
                           (ack_b.results[0].status, ack_b.results[0].code)])
        assert outcomes == [(APPLIED, None), (REFUSED, "insufficient_balance")]
        # both acks report the one committed balance
        assert ack_a.balances[0].points == ack_b.balances[0].points == 20
        refused_op = spend_a if ack_a.results[0].status is REFUSED else spend_b
        conflicts = [c for c in await ledger.storage.list_conflicts() if c.customer_id == cid]
        assert [(c.op_id, c.points_requested, c.balance_available) for c in conflicts] == [(refused_op.op_id, 80, 20)]
    assert await ledger.storage.audit_balances() == []


async def test_a_batch_waits_for_the_customer_rows_another_transaction_holds(ledger: Ledger) -> None:
    cid = k.any_uuid()
    await ledger.send("store-a", [k.enroll(cid), k.earn(cid, "sale-0", 100)])
    signer = ledger.stores["store-b"]
    data, _ = signer.batch([k.redeem(cid, "sale-b", 30)])
    async with ledger.storage.batch_tx() as tx:
        head = await tx.chain_head("store-a")
        assert head is not None
        await tx.load_state(brand_id=head.brand_id, store_id="store-a", op_ids=[], customer_ids=[cid], sale_ids=[])
        other = asyncio.create_task(ledger.service.submit_batch(data))
        assert await wait_for_lock_wait(ledger) == 1 and not other.done()
    ack = open_ack(await asyncio.wait_for(other, 10), ledger.service.cloud_key.public)
    assert (ack.results[0].status, ack.balances[0].points) == (APPLIED, 70)


async def test_batches_locking_the_same_customers_in_opposite_orders_do_not_deadlock(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    c1, c2 = k.any_uuid(), k.any_uuid()
    await ledger.send("store-a", [k.enroll(c1), k.earn(c1, "s1", 100), k.enroll(c2), k.earn(c2, "s2", 100)])
    for i in range(3):  # bounded
        ack_a, ack_b = await asyncio.gather(
            ledger.send("store-a", [k.redeem(c1, f"a1-{i}", 10), k.redeem(c2, f"a2-{i}", 10)]),
            ledger.send("store-b", [k.redeem(c2, f"b2-{i}", 10), k.redeem(c1, f"b1-{i}", 10)]),
        )
        assert [r.status for r in ack_a.results + ack_b.results] == [APPLIED] * 4
    balances = await ledger.storage.downlink_page(k.BRAND, 0, 10)
    assert {c.customer_id: c.balance for c in balances.customers} == {c1: 40, c2: 40}
    assert await ledger.storage.audit_balances() == []
    assert "deadlock" not in caplog.text and "applying a batch failed" not in caplog.text


async def wait_for_lock_wait(ledger: Ledger, polls: int = 100, at_least: int = 1) -> int:
    """How many of this test's sessions wait on a lock, once ``at_least`` do (polled ``polls`` times, 50 ms apart)."""
    count = 0
    for _ in range(polls):
        rows = await k.run_async_rows(
            k.base_pg_dsn(),
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            f" AND application_name = '{ledger.app_name}'",
        )
        count = int(rows[0][0])
        if count >= at_least:
            return count
        await asyncio.sleep(0.05)
    return count


async def test_a_customer_enrolled_meanwhile_by_another_store_is_never_overwritten(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    """Store b's batch loads its state while store a's batch creates the same customer id: b's
    transaction fails and rolls back instead of replacing a's customer and its points; the
    reconciler tries the batch again and the enrollment is then refused."""
    cid = k.any_uuid()
    data_b, _ = ledger.stores["store-b"].batch([k.enroll(cid, name="Bea"), k.earn(cid, "sb", 50)])
    ops_a = [k.enroll(cid, name="Ada"), k.earn(cid, "sa", 100)]
    async with ledger.storage.batch_tx() as tx:
        head = await tx.chain_head("store-a")
        assert head is not None
        state = await tx.load_state(brand_id=head.brand_id, store_id="store-a", op_ids=[op.op_id for op in ops_a],
                                    customer_ids=[cid], sale_ids=["sa"])
        now = k.now_ms()
        decided = reconcile(store_id="store-a", brand_id=head.brand_id, seq=head.last_seq + 1, ops=ops_a,
                            state=state, now=now)
        await tx.save_rows(decided)
        outcome = versioned(decided, await tx.take_versions(head.brand_id, decided.counter))
        other = asyncio.create_task(ledger.service.submit_batch(data_b))
        assert await wait_for_lock_wait(ledger) == 1 and not other.done()  # b loaded "no such customer"
        await tx.save_batch(BatchCommit("store-a", head.brand_id, head.last_seq + 1, head.last_seq, b"\x01" * 32,
                                        b"body", b"ack", now, now, outcome))
    ack = open_ack(await asyncio.wait_for(other, 20), KEY.public)
    assert "UniqueViolation" in caplog.text  # the first try failed on a's customer...
    assert any(sql.startswith("ROLLBACK") for _, sql in ledger.statements)  # ...and wrote nothing
    assert [(r.status, r.code) for r in ack.results] == [(REFUSED, "customer_exists"), (APPLIED, None)]
    assert ack.balances[0].points == 150
    balances = await ledger.storage.downlink_page(k.BRAND, 0, 10)
    assert [(c.name, c.balance) for c in balances.customers] == [("Ada", 150)]
    assert await ledger.storage.audit_balances() == []


async def test_a_store_held_by_one_reconciler_is_skipped_not_waited_for(ledger: Ledger) -> None:
    """Per store in sequence, across stores in parallel: while store a's row is locked (a
    reconciler applying its batch), store b's batch is claimed and applied meanwhile."""
    cid = k.any_uuid()
    await ledger.send("store-a", [k.enroll(cid), k.earn(cid, "s0", 10)])
    data_a, _ = ledger.stores["store-a"].batch([k.earn(cid, "s1", 5)])
    async with ledger.storage.batch_tx() as tx:
        assert await tx.chain_head("store-a") is not None  # as a reconciler holds it mid-batch
        waiting = asyncio.create_task(ledger.service.submit_batch(data_a))
        ack_b = await asyncio.wait_for(ledger.send("store-b", [k.earn(cid, "s2", 7)]), 10)
        assert ack_b.balances[0].points == 17
        assert not waiting.done()
        assert await wait_for_lock_wait(ledger, polls=10) == 0  # skipped, not queued behind the lock
    ack_a = open_ack(await asyncio.wait_for(waiting, 10), KEY.public)
    assert (ack_a.seq, ack_a.balances[0].points) == (2, 22)


async def test_two_reconcilers_share_many_stores_and_never_overspend(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    """Four stores, five batches each, all spending one customer's 100 points through two
    reconcilers: exactly 100 points are spent, each batch is applied once and each store's
    batches in order, with no deadlock."""
    for store_id in ("store-c", "store-d"):
        signer = ledger.stores[store_id] = k.StoreSigner(store_id)
        await ledger.storage.add_store(store_id, k.BRAND, signer.public_raw, k.now_ms())
    cid = k.any_uuid()
    await ledger.send("store-a", [k.enroll(cid), k.earn(cid, "s0", 100)])
    ledger.clear()

    async def spend(store_id: str) -> list[Ack]:
        return [await ledger.send(store_id, [k.redeem(cid, f"{store_id}-{n}", 10)]) for n in range(5)]

    acks = [ack for acks in await asyncio.gather(*(spend(s) for s in ("store-a", "store-b", "store-c", "store-d")))
            for ack in acks]
    results = [ack.results[0] for ack in acks]
    assert sum(r.status is APPLIED for r in results) == 10
    assert {r.code for r in results if r.status is REFUSED} == {"insufficient_balance"}
    assert await ledger.storage.audit_balances() == [] and await ledger.storage.inbox_depth() == 0
    downlink = await ledger.storage.downlink_page(k.BRAND, 0, 10)
    assert [c.balance for c in downlink.customers] == [0]
    assert len(await ledger.storage.list_conflicts()) == 10
    applied = [(done.store_id, done.seq) for _, done, _ in ledger.applied]
    assert len(applied) == len(set(applied)) == 20
    for store_id in ("store-a", "store-b", "store-c", "store-d"):
        seqs = [seq for store, seq in applied if store == store_id]
        assert seqs == sorted(seqs)
    assert {name for name, _, _ in ledger.applied} == {"w1", "w2"}  # both took part
    assert "deadlock" not in caplog.text and "applying a batch failed" not in caplog.text
