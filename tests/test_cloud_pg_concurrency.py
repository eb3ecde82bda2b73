"""PostgreSQL under concurrency: real parallel transactions on separate pool
connections, through the storage layer and the sync service (no mocks).

The balance check stays exact because a batch locks the customer rows it
names (``FOR UPDATE``, sorted) before it reads their balances: a second batch
spending the same points waits, then reads the balance the first committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from cloud.errors import StoreError
from cloud.keys import CloudKey
from cloud.model import BatchCommit
from cloud.pg_storage import PgStorage
from cloud.reconciler import reconcile
from cloud.service import SyncService
from protocol import Ack, OpStatus, open_ack

from . import cloudkit as k

APPLIED, REFUSED = OpStatus.APPLIED, OpStatus.REFUSED


@dataclass
class Ledger:
    storage: PgStorage
    service: SyncService
    stores: dict[str, k.StoreSigner]
    statements: list[str]
    app_name: str

    async def send(self, store: str, ops: list[k.Op]) -> Ack:
        signer = self.stores[store]
        data, batch_hash = signer.batch(ops)
        ack = open_ack(await self.service.submit_batch(data), self.service.cloud_key.public)
        signer.advance(batch_hash)
        return ack


@pytest.fixture
async def ledger(pg: k.Backend) -> AsyncIterator[Ledger]:
    assert pg.dsn is not None and pg.schema is not None
    statements: list[str] = []
    # application_name lets the test find its own sessions in pg_stat_activity
    storage = PgStorage(f"{pg.dsn}&application_name={pg.schema}", min_size=2, on_query=statements.append)
    await storage.open(k.now_ms())
    try:
        stores: dict[str, k.StoreSigner] = {}
        await k.seed(storage, stores)
        service = SyncService(storage, CloudKey.from_seed(b"\x09" * 32), k.now_ms)
        yield Ledger(storage, service, stores, statements, pg.schema)
    finally:
        await storage.close()


def overlapped(statements: list[str]) -> bool:
    """True if a second write transaction began before the first one committed."""
    open_writes = 0
    for sql in statements:
        if sql.startswith("BEGIN ISOLATION LEVEL READ COMMITTED"):
            open_writes += 1
            if open_writes == 2:
                return True
        elif sql.startswith("COMMIT") or sql.startswith("ROLLBACK"):
            open_writes = max(0, open_writes - 1)
    return False


async def test_two_stores_spending_the_same_points_at_once_exactly_one_applies(ledger: Ledger) -> None:
    overlaps = 0
    for i in range(3):  # bounded: three rounds, each a fresh customer
        cid = k.any_uuid()
        await ledger.send("store-a", [k.enroll(cid), k.earn(cid, f"sale-{i}", 100)])
        spend_a, spend_b = k.redeem(cid, f"sale-a{i}", 80), k.redeem(cid, f"sale-b{i}", 80)
        ledger.statements.clear()
        ack_a, ack_b = await asyncio.gather(
            ledger.send("store-a", [spend_a]), ledger.send("store-b", [spend_b])
        )
        overlaps += overlapped(ledger.statements)
        outcomes = sorted([(ack_a.results[0].status, ack_a.results[0].code),
                           (ack_b.results[0].status, ack_b.results[0].code)])
        assert outcomes == [(APPLIED, None), (REFUSED, "insufficient_balance")]
        # both acks report the one committed balance
        assert ack_a.balances[0].points == ack_b.balances[0].points == 20
        refused_op = spend_a if ack_a.results[0].status is REFUSED else spend_b
        conflicts = [c for c in await ledger.storage.list_conflicts() if c.customer_id == cid]
        assert [(c.op_id, c.points_requested, c.balance_available) for c in conflicts] == [(refused_op.op_id, 80, 20)]
    # the two transactions really ran at the same time, not one after the other
    assert overlaps >= 1
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


async def test_batches_locking_the_same_customers_in_opposite_orders_do_not_deadlock(ledger: Ledger) -> None:
    c1, c2 = k.any_uuid(), k.any_uuid()
    await ledger.send("store-a", [k.enroll(c1), k.earn(c1, "s1", 100), k.enroll(c2), k.earn(c2, "s2", 100)])
    for i in range(3):  # bounded
        ledger.statements.clear()
        ack_a, ack_b = await asyncio.gather(
            ledger.send("store-a", [k.redeem(c1, f"a1-{i}", 10), k.redeem(c2, f"a2-{i}", 10)]),
            ledger.send("store-b", [k.redeem(c2, f"b2-{i}", 10), k.redeem(c1, f"b1-{i}", 10)]),
        )
        assert [r.status for r in ack_a.results + ack_b.results] == [APPLIED] * 4
    balances = await ledger.storage.downlink_page(k.BRAND, 0, 10)
    assert {c.customer_id: c.balance for c in balances.customers} == {c1: 40, c2: 40}
    assert await ledger.storage.audit_balances() == []


async def wait_for_lock_wait(ledger: Ledger) -> int:
    """How many of this test's sessions wait on a lock, once one does (polled for at most ~5 s)."""
    for _ in range(100):
        rows = await k.run_async_rows(
            k.base_pg_dsn(),
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            f" AND application_name = '{ledger.app_name}'",
        )
        if rows[0][0]:
            return int(rows[0][0])
        await asyncio.sleep(0.05)
    return 0


async def test_a_customer_enrolled_meanwhile_by_another_store_is_never_overwritten(ledger: Ledger) -> None:
    """Store b loads its state while store a's batch creates the same customer id: b's batch
    fails (and is resent by its edge) instead of replacing a's customer and its points."""
    cid = k.any_uuid()
    data_b, _ = ledger.stores["store-b"].batch([k.enroll(cid, name="Bea"), k.earn(cid, "sb", 50)])
    ops_a = [k.enroll(cid, name="Ada"), k.earn(cid, "sa", 100)]
    async with ledger.storage.batch_tx() as tx:
        head = await tx.chain_head("store-a")
        assert head is not None
        state = await tx.load_state(brand_id=head.brand_id, store_id="store-a", op_ids=[op.op_id for op in ops_a],
                                    customer_ids=[cid], sale_ids=["sa"])
        other = asyncio.create_task(ledger.service.submit_batch(data_b))
        assert await wait_for_lock_wait(ledger) == 1 and not other.done()  # b loaded "no such customer"
        now = k.now_ms()
        outcome = reconcile(store_id="store-a", brand_id=head.brand_id, seq=head.last_seq + 1, ops=ops_a,
                            state=state, now=now)
        await tx.save_batch(BatchCommit("store-a", head.last_seq + 1, head.last_seq, b"\x01" * 32, b"body",
                                        b"ack", now, now, outcome))
    with pytest.raises(StoreError, match="UniqueViolation"):
        await asyncio.wait_for(other, 10)
    balances = await ledger.storage.downlink_page(k.BRAND, 0, 10)
    assert [(c.name, c.balance) for c in balances.customers] == [("Ada", 100)]
    # the edge resends the same batch: the enrollment is refused, the earn lands on a's customer
    ack = open_ack(await ledger.service.submit_batch(data_b), ledger.service.cloud_key.public)
    assert [(r.status, r.code) for r in ack.results] == [(REFUSED, "customer_exists"), (APPLIED, None)]
    assert ack.balances[0].points == 150
    assert await ledger.storage.audit_balances() == []
