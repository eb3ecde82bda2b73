"""The pure apply step: loaded state + ops -> results, rows and balances (no I/O)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

from cloud.model import BatchOutcome, CustomerState, LedgerState, OpRecord, SaleState, versioned
from cloud.reconciler import reconcile
from protocol import Balance, Op, OpResult, OpStatus, Program

from . import cloudkit as k

STORE, BRAND = "store-a", "acme"
APPLIED, REFUSED = OpStatus.APPLIED, OpStatus.REFUSED


def customer(customer_id: str, balance: int, *, brand: str = BRAND, version: int = 7) -> CustomerState:
    return CustomerState(customer_id, brand, "Bob", "+331", None, None, "{}", balance, version, STORE, 1, 1)


def state(*, customers: Sequence[CustomerState] = (), sales: Sequence[SaleState] = (),
          ops: Sequence[OpRecord] = (), counter: int = 100, program_version: int | None = 1) -> LedgerState:
    return LedgerState(
        program_version=program_version,
        counter=counter,
        customers={c.customer_id: c for c in customers},
        sales={s.sale_id: s for s in sales},
        ops={o.op_id: o for o in ops},
    )


# Version 1 lets a reversal take a balance below zero; version 2 clamps it at zero (the default).
PROGRAMS = {
    1: Program(BRAND, 1, "Acme", 1, 100, '{"refund_policy":"negative"}'),
    2: Program(BRAND, 2, "Acme", 1, 100),
}


def run(ops: Sequence[Op], st: LedgerState) -> BatchOutcome:
    return reconcile(store_id=STORE, brand_id=BRAND, seq=3, ops=ops, state=st, now=k.now_ms(), programs=PROGRAMS)


def statuses(out: BatchOutcome) -> list[tuple[OpStatus, str | None, int]]:
    return [(r.status, r.code, r.points) for r in out.results]


def audit(out: BatchOutcome, before: LedgerState) -> None:
    """Every balance change has its ledger entries: final - initial == sum(entries)."""
    for c in out.customers:
        initial = before.customers[c.customer_id].balance if c.customer_id in before.customers else 0
        assert c.balance - initial == sum(e.points for e in out.entries if e.customer_id == c.customer_id)


def test_happy_path_in_batch_order() -> None:
    cid = k.any_uuid()
    ops = [
        k.enroll(cid, name="Ada"),
        k.earn(cid, "s1", 50),
        k.redeem(cid, "s2", 20),
        k.adjust(cid, 5),
        k.update(cid, email="ada@example.org", clear=("phone",)),
        k.void(cid, "s1", 50, 0),
    ]
    st = state()
    out = run(ops, st)
    assert statuses(out) == [
        (APPLIED, None, 0), (APPLIED, None, 50), (APPLIED, None, -20), (APPLIED, None, 5),
        (APPLIED, None, 0), (APPLIED, None, -50),
    ]
    (final,) = out.customers
    assert (final.balance, final.email, final.phone, final.brand_id) == (-15, "ada@example.org", None, BRAND)
    assert json.loads(final.consent)["channels"] == ["phone"]
    # enroll, earn, redeem, adjust, update, void: six changes, six counter steps
    assert out.counter == 106 and final.version == 106
    assert out.balances == (Balance(cid, -15, 106),)
    assert [e.kind for e in out.entries] == ["earn", "redeem", "adjust", "void_earn"]
    sales = {s.sale_id: s for s in out.sales}
    assert (sales["s1"].earned, sales["s1"].voided_by) == (50, ops[5].op_id)
    assert sales["s2"].redeemed == 20 and sales["s2"].voided_by is None
    assert [r.op_id for r in out.ops] == [op.op_id for op in ops]
    audit(out, st)


def test_known_op_same_digest_returns_stored_result_without_reapplying() -> None:
    cid = k.any_uuid()
    op = k.earn(cid, "s1", 40)
    stored = OpRecord(op.op_id, op.digest(), STORE, 1, "earn", op.terminal_id, cid, "applied", None, 40,
                      1, None, op.at, 1)
    st = state(customers=[customer(cid, 40)], ops=[stored])
    out = run([op], st)
    assert statuses(out) == [(APPLIED, None, 40)]
    assert out.ops == () and out.entries == () and out.customers == () and out.counter == 100
    assert out.balances == (Balance(cid, 40, 7),)


def test_known_op_id_with_other_content_is_refused_and_not_recorded() -> None:
    cid = k.any_uuid()
    first = k.earn(cid, "s1", 40)
    stored = OpRecord(first.op_id, first.digest(), STORE, 1, "earn", first.terminal_id, cid, "applied",
                      None, 40, 1, None, first.at, 1)
    forged = k.earn(cid, "s1", 4000, op_id=first.op_id)
    out = run([forged], state(customers=[customer(cid, 40)], ops=[stored]))
    assert statuses(out) == [(REFUSED, "op_id_conflict", 0)]
    assert out.ops == () and out.entries == () and out.customers == ()


def test_redeem_above_balance_is_a_conflict_and_later_ops_still_apply() -> None:
    cid = k.any_uuid()
    ops = [k.redeem(cid, "s1", 80), k.earn(cid, "s2", 10), k.redeem(cid, "s3", 55)]
    out = run(ops, state(customers=[customer(cid, 50)]))
    assert statuses(out) == [(REFUSED, "insufficient_balance", 0), (APPLIED, None, 10), (APPLIED, None, -55)]
    (conflict,) = out.conflicts
    assert (conflict.op_id, conflict.points_requested, conflict.balance_available) == (ops[0].op_id, 80, 50)
    assert (conflict.terminal_id, conflict.kind, conflict.store_id) == (k.TERMINAL, "redeem", STORE)
    assert out.balances == (Balance(cid, 5, 102),)
    # the refused redemption still opened its sale, with nothing redeemed
    assert {s.sale_id: s.redeemed for s in out.sales} == {"s1": 0, "s2": 0, "s3": 55}


def test_void_gives_back_only_what_the_cloud_applied_and_notes_the_difference() -> None:
    cid = k.any_uuid()
    sale = SaleState(STORE, "s1", cid, 30, 0, None, None)  # the edge also redeemed 100 here, refused
    op = k.void(cid, "s1", 30, 100)
    out = run([op], state(customers=[customer(cid, 10)], sales=[sale]))
    assert statuses(out) == [(APPLIED, None, -30)]
    assert out.balances == (Balance(cid, -20, 101),)  # version 1 lets a reversal go below zero, and says so
    (record,) = out.ops
    assert record.note is not None and "gives back 0" in record.note
    (mismatch,) = out.mismatches
    assert (mismatch.kind, mismatch.edge_points, mismatch.cloud_points) == ("void", 70, -30)
    (shortfall,) = out.shortfalls
    assert (shortfall.policy, shortfall.points, shortfall.balance_after) == ("negative", 20, -20)


def test_a_void_under_the_clamp_policy_stops_at_zero_and_reports_the_shortfall() -> None:
    cid = k.any_uuid()
    sale = SaleState(STORE, "s1", cid, 30, 0, None, None)
    out = run([k.void(cid, "s1", 30, 0, program_version=2)], state(customers=[customer(cid, 10)], sales=[sale]))
    assert statuses(out) == [(APPLIED, None, -10)]
    assert out.balances == (Balance(cid, 0, 101),) and out.mismatches == ()
    assert [(s.policy, s.points, s.balance_after) for s in out.shortfalls] == [("clamp", 20, 0)]
    (saved,) = out.sales
    assert saved.earn_reversed == 30  # reversed in full, 20 of it could not be taken: never taken again


def test_void_refusals() -> None:
    cid, other = k.any_uuid(), k.any_uuid()
    voided = SaleState(STORE, "s2", cid, 5, 0, "01900000-0000-7000-8000-000000000000", 1)
    st = state(customers=[customer(cid, 10), customer(other, 0)],
               sales=[voided, SaleState(STORE, "s3", cid, 5, 0, None, None)])
    out = run([k.void(cid, "nope", 0, 0), k.void(cid, "s2", 5, 0), k.void(other, "s3", 5, 0)], st)
    assert statuses(out) == [
        (REFUSED, "unknown_sale", 0), (REFUSED, "already_voided", 0), (REFUSED, "customer_mismatch", 0)
    ]
    assert out.entries == () and out.customers == () and out.counter == 100


def test_earn_and_redeem_on_a_voided_sale_are_refused() -> None:
    cid = k.any_uuid()
    ops = [k.earn(cid, "s1", 10), k.void(cid, "s1", 10, 0), k.earn(cid, "s1", 10), k.redeem(cid, "s1", 1)]
    out = run(ops, state(customers=[customer(cid, 0)]))
    assert [s[1] for s in statuses(out)] == [None, None, "sale_voided", "sale_voided"]
    assert out.balances[0].points == 0


def test_unknown_customer_and_other_brand_and_existing_customer() -> None:
    mine, theirs, ghost = k.any_uuid(), k.any_uuid(), k.any_uuid()
    st = state(customers=[customer(mine, 10), customer(theirs, 99, brand="zeta")])
    out = run([k.earn(theirs, "s1", 5), k.redeem(ghost, "s2", 1), k.adjust(theirs, -1),
               k.update(ghost, name="X"), k.enroll(mine), k.enroll(theirs)], st)
    assert [s[1] for s in statuses(out)] == [
        "unknown_customer", "unknown_customer", "unknown_customer", "unknown_customer",
        "customer_exists", "customer_exists",
    ]
    # another brand's customer is never reported, nor created, nor changed
    assert out.balances == (Balance(mine, 10, 7),)
    assert out.customers == () and out.sales == ()


def test_negative_adjust_beyond_balance_is_refused_with_conflict() -> None:
    cid = k.any_uuid()
    out = run([k.adjust(cid, -11), k.adjust(cid, -10)], state(customers=[customer(cid, 10)]))
    assert statuses(out) == [(REFUSED, "insufficient_balance", 0), (APPLIED, None, -10)]
    assert [(c.kind, c.points_requested, c.balance_available) for c in out.conflicts] == [("adjust", 11, 10)]


def test_program_version_difference_is_applied_and_recorded() -> None:
    cid = k.any_uuid()
    out = run([k.earn(cid, "s1", 10, program_version=1), k.earn(cid, "s2", 10, program_version=2)],
              state(customers=[customer(cid, 0)], program_version=2))
    assert statuses(out) == [(APPLIED, None, 10), (APPLIED, None, 10)]
    first, second = out.ops
    assert first.program_version == 1 and first.note == "program_version 1 differs from current 2"
    assert second.program_version == 2 and second.note is None


def test_zero_point_earn_changes_no_version() -> None:
    cid = k.any_uuid()
    out = run([k.earn(cid, "s1", 0)], state(customers=[customer(cid, 3)]))
    assert statuses(out) == [(APPLIED, None, 0)]
    assert out.customers == () and out.entries == () and out.balances == (Balance(cid, 3, 7),)
    assert [s.sale_id for s in out.sales] == ["s1"]


def test_results_match_ops_one_to_one() -> None:
    cid = k.any_uuid()
    ops = [k.enroll(cid)] + [k.earn(cid, f"s{i}", i) for i in range(50)]
    out = run(ops, state())
    assert [r.op_id for r in out.results] == [op.op_id for op in ops]
    assert all(isinstance(r, OpResult) for r in out.results)
    assert out.balances == (Balance(cid, sum(range(50)), 100 + 50),)  # the 0-point earn moves nothing


def test_versions_decided_from_zero_move_past_the_brand_counter() -> None:
    """The storage lets a batch decide with counter 0 and takes the brand's counter last."""
    cid, other = k.any_uuid(), k.any_uuid()
    out = run([k.enroll(cid), k.earn(cid, "s1", 10), k.redeem(other, "s2", 99)],
              state(customers=[customer(other, 5, version=40)], counter=0))
    assert out.counter == 2 and [c.version for c in out.customers] == [2]
    moved = versioned(out, 100)
    assert [(c.customer_id, c.version) for c in moved.customers] == [(cid, 102)]
    assert moved.customers[0] == dataclasses.replace(out.customers[0], version=102)  # nothing else moved
    # the customer the batch did not change keeps the version it has in the ledger
    assert moved.balances == (Balance(cid, 10, 102), Balance(other, 5, 40))
    assert (moved.counter, moved.results, moved.entries) == (102, out.results, out.entries)
    assert versioned(out, 0) is out


def test_rows_built_positionally_name_every_field() -> None:
    """The apply step builds these rows positionally (dataclasses.replace is too slow per op):
    a field added or moved must be added or moved there too (model.versioned, WorkingCustomer.final,
    _Batch.record)."""
    assert [f.name for f in dataclasses.fields(CustomerState)] == [
        "customer_id", "brand_id", "name", "phone", "email", "card_code", "consent", "balance", "version",
        "enrolled_store", "created_at", "updated_at", "groups", "opted_out"]
    assert [f.name for f in dataclasses.fields(BatchOutcome)] == [
        "results", "balances", "ops", "customers", "sales", "entries", "conflicts", "counter", "mismatches",
        "shortfalls", "claim_rows"]
    assert [f.name for f in dataclasses.fields(OpRecord)] == [
        "op_id", "digest", "store_id", "seq", "kind", "terminal_id", "customer_id", "status", "code", "points",
        "program_version", "note", "at", "created_at"]
