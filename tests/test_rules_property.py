"""Sale -> earn -> refunds, as a property, through the real edge writer and the
real cloud reconciler (an edge SQLite store and its sync task, a SQLite
ledger behind the real SyncService, joined in-process by signed batches):

for any sale, any rules, any spending in between and any sequence of partial
refunds, synced or not in between,
- the reversals add up to at most what the sale earned, and to exactly that
  once every line is back;
- a full refund with nothing spent returns the balance to where it started;
- no balance goes below zero unless the refund policy allows it;
- the edge and the cloud end on the same balance, the same shortfalls, and
  the cloud computed nothing differently.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cloud.errors import NotYetApplied
from cloud.keys import create_key
from cloud.service import SyncService
from cloud.sqlite_storage import SQLiteStorage
from cloud.worker import Worker
from edge import sale_writes, writes
from edge.outbox import Identity
from edge.store import EdgeStore, save_program, set_meta
from edge.sync import SyncTask
from protocol import Adjust, Consent, Earn, Enroll, Program, Redeem, Refund, key_id_for, public_bytes, uuid7
from protocol.earning import Customer, EarningRules, RefundPolicy, compute_earn
from protocol.sale import Sale, SaleLine, SaleState, Tender, TenderKind

from .bothkit import rules_settings
from .test_rules_domain import lines_st, rules_st

BRAND, STORE_ID = "acme", "store-p"
TERMINAL = "01234567-89ab-4cde-8f01-23456789abcd"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class InProcess:
    """The edge's transport, straight into the cloud's service: the same signed envelopes, no socket.
    A batch is received (answered 202), applied by a reconciler here, and sent again for its ack."""

    def __init__(self, service: SyncService, worker: Worker) -> None:
        self.service = service
        self.worker = worker

    async def post_envelope(self, path: str, envelope: bytes) -> bytes:
        if path == "/v1/batches":
            try:
                return await self.service.submit_batch(envelope)
            except NotYetApplied:
                await self.worker.drain()
                return await self.service.submit_batch(envelope)
        return await self.service.pull(envelope)


@dataclass
class Rig:
    edge: EdgeStore
    sync: SyncTask
    cloud: SQLiteStorage
    customer_id: str

    async def write(self, action: writes.Action) -> dict[str, Any]:
        status, body = await self.edge.write(action)
        assert status == 201, body
        return body

    async def synced(self) -> int:
        """Sync; the edge's and the cloud's balance, which must agree."""
        await self.sync.sync_once()
        edge_balance = self.edge.customer(self.customer_id)["balance"]
        rows = await self.cloud.downlink_page(BRAND, 0, 10)
        (cloud_customer,) = rows.customers
        assert edge_balance["pending"] == 0
        assert edge_balance["confirmed"] == cloud_customer.balance
        return int(cloud_customer.balance)

    def projected(self) -> int:
        balance = self.edge.customer(self.customer_id)["balance"]
        return int(balance["confirmed"] + balance["pending"])


async def open_rig(root: Path, program: Program) -> Rig:
    cloud = SQLiteStorage(root / "cloud.sqlite3")
    await cloud.open(now_ms())
    await cloud.add_brand(BRAND, "Acme", now_ms())
    await cloud.set_program(BRAND, program.name, program.points_per_unit, program.unit_amount, now_ms(),
                            program.settings)
    store_key = Ed25519PrivateKey.generate()
    await cloud.add_store(STORE_ID, BRAND, public_bytes(store_key.public_key()), now_ms())
    cloud_key = create_key(root / "cloud.key")
    service = SyncService(cloud, cloud_key, now_ms, ack_wait=0)
    EdgeStore.initialise(root / "edge.sqlite3")
    edge = EdgeStore(root / "edge.sqlite3")
    await edge.open()
    await edge.write(lambda c: (save_program(c, program), set_meta(c, "node_id", uuid7(now_ms()))))
    identity = Identity(STORE_ID, edge.meta("node_id"), key_id_for(store_key.public_key()), store_key)
    sync = SyncTask(edge, InProcess(service, Worker(cloud, cloud_key, now_ms)), identity, cloud_key.public)
    now = now_ms()
    enroll = Enroll(op_id=uuid7(now), at=now, terminal_id=TERMINAL, customer_id=uuid7(now), name="Pat",
                    phone="+15145550999", email=None, card_code=None, consent=Consent(True, (), "pos", None, now))
    await edge.write(writes.enroll(enroll))
    return Rig(edge, sync, cloud, enroll.customer_id)


def paid_sale(raw_lines: list[tuple[int, int, int, int, str]], loyalty_pct: int) -> Sale:
    lines = tuple(
        SaleLine(f"l{i}", sku, None, qty, price, min(discount_pct * qty * price // 100, qty * price), tax)
        for i, (qty, price, discount_pct, tax, sku) in enumerate(raw_lines)
    )
    draft = Sale("sale-1", lines, 0, (), SaleState.PAID)
    loyalty = draft.total * loyalty_pct // 100
    tenders = tuple(t for t in (Tender(TenderKind.LOYALTY, loyalty) if loyalty else None,
                                Tender(TenderKind.CASH, draft.total - loyalty) if draft.total > loyalty else None)
                    if t is not None)
    return Sale("sale-1", lines, 0, tenders, SaleState.PAID)


async def scenario(root: Path, rules: EarningRules, policy: RefundPolicy, sale: Sale, start: int, spend_pct: int,
                   refunds: list[tuple[list[tuple[str, int]], bool]]) -> None:
    program = Program(BRAND, 1, "Property", rules.points_per_unit, rules.unit_amount,
                      rules_settings(rules, refund_policy=policy.value))
    rig = await open_rig(root, program)
    try:
        now = now_ms()
        cid = rig.customer_id
        if start:
            await rig.write(writes.adjust(Adjust(op_id=uuid7(now), at=now, terminal_id=TERMINAL, customer_id=cid,
                                                 points=start, reason="opening", actor="test")))
        earned = compute_earn(sale, rules, Customer(), now).total
        earn = Earn(op_id=uuid7(now), at=now, terminal_id=TERMINAL, customer_id=cid, sale_id=sale.sale_id,
                    amount=sale.total, points=earned, program_version=1, sale=sale)
        await rig.write(sale_writes.earn(earn, Customer()))
        balance = await rig.synced()
        assert balance == start + earned
        spent = balance * spend_pct // 100
        if spent:
            await rig.write(sale_writes.redeem(Redeem(op_id=uuid7(now), at=now, terminal_id=TERMINAL,
                                                      customer_id=cid, sale_id="elsewhere", points=spent,
                                                      program_version=1), "points"))
        reversed_total = edge_shortfall = 0
        for lines, sync_after in refunds:
            def make(customer: str, take: int, give: int, lines: list[tuple[str, int]] = lines) -> Refund:
                at = now_ms()
                return Refund(op_id=uuid7(at), at=at, terminal_id=TERMINAL, customer_id=customer,
                              sale_id=sale.sale_id, lines=tuple(lines), reversed_points=take, returned_points=give,
                              program_version=1)

            answer = await rig.write(sale_writes.refund(sale.sale_id, tuple(lines), make, policy, now_ms()))
            assert answer["returned_points"] == 0  # nothing was redeemed on this sale
            reversed_total += answer["reversed_points"]
            edge_shortfall += answer["shortfall"]
            assert reversed_total <= earned, "a refund reversed more than the sale earned"
            if policy is RefundPolicy.CLAMP:
                assert rig.projected() >= 0
            if sync_after:
                balance = await rig.synced()
                assert balance >= 0 or policy is RefundPolicy.NEGATIVE
        final = await rig.synced()
        returned: dict[str, int] = {}
        for lines, _ in refunds:
            for line_id, quantity in lines:
                returned[line_id] = returned.get(line_id, 0) + quantity
        everything = returned == {line.line_id: line.quantity for line in sale.lines}
        if everything:
            assert reversed_total == earned
        if policy is RefundPolicy.NEGATIVE:
            assert final == start + earned - spent - reversed_total
        else:
            assert final >= 0
            assert final == start + earned - spent - reversed_total + edge_shortfall
        if everything and not spent:
            assert final == start, "a full refund with nothing spent returns the balance to where it started"
        assert await rig.cloud.list_mismatches() == []
        assert sum(s.points for s in await rig.cloud.list_shortfalls()) == edge_shortfall
        assert await rig.cloud.audit_balances() == []
    finally:
        await rig.edge.close()
        await rig.cloud.close()


@st.composite
def refund_plans(draw: st.DrawFn, sale: Sale) -> list[tuple[list[tuple[str, int]], bool]]:
    """A sequence of partial refunds (each some lines, some of each), each synced after or not."""
    left = {line.line_id: line.quantity for line in sale.lines}
    plan = []
    while any(left.values()) and draw(st.booleans(), label="refund again"):
        open_ids = [line_id for line_id, qty in left.items() if qty]
        chosen = draw(st.lists(st.sampled_from(open_ids), min_size=1, max_size=len(open_ids), unique=True))
        lines = []
        for line_id in chosen:
            quantity = draw(st.integers(1, left[line_id]), label=f"quantity of {line_id}")
            left[line_id] -= quantity
            lines.append((line_id, quantity))
        plan.append((lines, draw(st.booleans(), label="sync after")))
    if draw(st.booleans(), label="return the rest"):
        rest = [(line_id, qty) for line_id, qty in left.items() if qty]
        if rest:
            plan.append((rest, False))
    return plan


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_lines=lines_st, rules=rules_st, loyalty_pct=st.integers(0, 100), policy=st.sampled_from(list(RefundPolicy)),
       start=st.integers(0, 300), spend_pct=st.sampled_from([0, 0, 50, 100]), data=st.data())
def test_sale_earn_refunds_through_the_edge_and_the_cloud(
    raw_lines: list[tuple[int, int, int, int, str]], rules: EarningRules, loyalty_pct: int, policy: RefundPolicy,
    start: int, spend_pct: int, data: st.DataObject,
) -> None:
    sale = paid_sale(raw_lines, loyalty_pct)
    assume(sale.total > 0)
    refunds = data.draw(refund_plans(sale), label="refunds")
    with tempfile.TemporaryDirectory() as root:
        asyncio.run(scenario(Path(root), rules, policy, sale, start, spend_pct, refunds))
