"""A step of several batches in one transaction decides exactly what steps of one batch do.

Steps of several batches run under SQLite's single writer (on PostgreSQL a step is one batch).
Two SQLite ledgers receive the same signed batches from the same stores; one applies them one
batch per transaction, the other up to eight per transaction (all loaded first, decided in turn
over what the batches before left). With one
clock, every table ends the same and every ack has the same bytes: sales, card runs, receipt
claims, resent ops and refusals carry over from a batch to the next inside a step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cloud.errors import NotYetApplied
from cloud.keys import CloudKey
from cloud.service import SyncService
from cloud.storage import Storage
from cloud.worker import Applied, Worker
from protocol import NO_CUSTOMER, Claim, Earn, Op, UnclaimedSale, uuid7
from protocol.claims import DAY_MS, code_hash, new_code
from protocol.sale import Sale, sale_from_wire

from . import cloudkit as k

KEY = CloudKey.from_seed(b"\x05" * 32)
T0 = 1_790_000_000_000


def card_sale(sale_id: str, token: str | None, amount: int = 1000) -> Sale:
    tender = {"kind": "card", "amount": amount, "card_token": token} if token else {"kind": "cash", "amount": amount,
                                                                                      "card_token": None}
    return sale_from_wire({
        "sale_id": sale_id, "sale_discount": 0, "state": "paid",
        "lines": [{"line_id": "l1", "sku": "latte", "category": None, "quantity": 1, "unit_price": amount,
                   "line_discount": 0, "tax": 0}],
        "tenders": [tender],
    })


def whole_earn(customer_id: str, sale_id: str, token: str | None, points: int = 10) -> Earn:
    return Earn(op_id=k.new_id(), at=T0, terminal_id=k.TERMINAL, customer_id=customer_id, sale_id=sale_id,
                amount=1000, points=points, program_version=1, sale=card_sale(sale_id, token))


def workload() -> list[tuple[str, list[Op]]]:
    """Five batches of two stores, in the order received; each later batch leans on an earlier one."""
    c1, c2, c3 = k.any_uuid(), k.any_uuid(), k.any_uuid()
    code = new_code()
    unclaimed = UnclaimedSale(op_id=uuid7(T0), at=T0, terminal_id=k.TERMINAL, customer_id=NO_CUSTOMER,
                              sale_id="u1", amount=1000, program_version=1, sale=card_sale("u1", None),
                              claim_hash=code_hash(code), expires_at=T0 + 30 * DAY_MS)
    goodwill = k.adjust(c2, 50)
    return [
        ("store-a", [k.enroll(c1), k.enroll(c2), whole_earn(c1, "s1", "tok-1", 100), unclaimed, goodwill]),
        ("store-b", [k.redeem(c1, "b1", 80), whole_earn(c2, "b2", "tok-2")]),
        ("store-a", [k.redeem(c1, "s2", 50), k.void(c1, "s1", 100, 0), whole_earn(c1, "s3", "tok-1"),
                     Claim(op_id=uuid7(T0), at=T0, terminal_id=k.TERMINAL, customer_id=c2, sale_id="u1", points=10,
                           program_version=1),
                     goodwill]),  # resent: answered from its stored result
        ("store-b", [k.update(c2, email="bea@example.com"), whole_earn(c2, "b3", "tok-2"), k.redeem(c2, "b4", 5),
                     k.redeem(c1, "b5", 10_000)]),  # refused: c1's balance unchanged, at its earlier batch's version
        ("store-a", [k.enroll(c3), k.earn(c3, "s4", 7), whole_earn(c1, "s5", "tok-1"), k.enroll(c1)]),
    ]


async def ledger(path: Path, backend: k.Backend, signers: dict[str, k.StoreSigner]) -> Storage:
    storage = backend.storage(path)
    await storage.open(T0)
    await storage.add_brand(k.BRAND, "Acme Coffee", T0)
    await storage.set_program(k.BRAND, "Acme Rewards", 1, 100, T0)
    for store_id, signer in signers.items():
        await storage.add_store(store_id, k.BRAND, signer.public_raw, T0)
    # A brand that has changed before: versions counted from 0 in a step must move past its counter.
    await backend.execute(path / "cloud.sqlite3",
                          f"UPDATE brand_counters SET value = 1000 WHERE brand_id = '{k.BRAND}'")
    return storage


async def apply_all(storage: Storage, envelopes: list[bytes], group: int) -> list[list[Applied]]:
    received = iter(range(T0, T0 + 1000))  # each batch received a millisecond after the one before
    service = SyncService(storage, KEY, lambda: next(received), ack_wait=0)
    for data in envelopes:
        with pytest.raises(NotYetApplied):
            await service.submit_batch(data)
    worker = Worker(storage, KEY, lambda: T0 + 5000, group=group)
    steps = []
    for _ in range(len(envelopes)):  # bounded: at most one step a batch
        applied = await worker.apply_some()
        if not applied:
            break
        steps.append(applied)
    return steps


async def snapshot(storage: Storage, backend: k.Backend, path: Path) -> dict[str, list[tuple[Any, ...]]]:
    tables = [t for t in k.TABLES if t not in ("stores", "store_keys", "store_sync")]  # keys differ per run
    return {t: sorted(await backend.rows(path / "cloud.sqlite3", f"SELECT * FROM {t}"), key=repr) for t in tables}


async def test_a_step_of_several_batches_decides_and_writes_what_steps_of_one_do(tmp_path: Path) -> None:
    signers = {s: k.StoreSigner(s) for s in ("store-a", "store-b")}
    envelopes = []
    for store_id, ops in workload():
        data, batch_hash = signers[store_id].batch(ops)
        signers[store_id].advance(batch_hash)
        envelopes.append(data)
    results = []
    for group in (1, 8):
        path = tmp_path / f"group-{group}"
        path.mkdir()
        storage = await ledger(path, k.SQLITE, signers)
        try:
            steps = await apply_all(storage, envelopes, group)
            results.append((steps, await snapshot(storage, k.SQLITE, path)))
        finally:
            await storage.close()
    (single, single_rows), (grouped, grouped_rows) = results
    assert [len(step) for step in single] == [1] * 5
    assert [len(step) for step in grouped] == [5]  # one transaction
    acks = [(a.store_id, a.seq, a.ack) for step in single for a in step]
    assert [(a.store_id, a.seq, a.ack) for step in grouped for a in step] == acks
    for table, rows in single_rows.items():
        assert grouped_rows[table] == rows, table
    # the workload did reach what it leans on
    assert len(single_rows["conflicts"]) == 2 and len(single_rows["card_links"]) == 2
    assert [r for r in single_rows["claimable_sales"] if r[10] is not None]  # u1 claimed
