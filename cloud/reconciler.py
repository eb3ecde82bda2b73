"""The apply step: loaded ledger state + a batch's ops -> results and rows.

Pure: no I/O, no clock (``now`` is passed in), so it is unit-testable and the
same code serves every storage backend. The caller has already verified the
envelope and the store's sequence; this decides each op exactly once:

1. deduplicate: an op_id already stored returns its stored result when the
   content digest matches, and is refused ``op_id_conflict`` when it differs;
2. order: ops apply in batch order, each seeing the effects of the previous;
3. conflict rules: a debit above the confirmed balance is refused (and
   recorded as a conflict); a void takes back only what was really applied;
4. results: one OpResult per op and the final Balance of every customer the
   batch names.

Every balance change and profile change bumps the brand's change counter and
stamps the customer with it, which is what pulls page on.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass

from protocol import (
    Adjust,
    Balance,
    Earn,
    Enroll,
    Op,
    OpResult,
    OpStatus,
    Redeem,
    UpdateProfile,
    Void,
)
from protocol.validate import MAX_POINTS

from .model import (
    BatchOutcome,
    ConflictRecord,
    CustomerState,
    LedgerEntry,
    LedgerState,
    OpRecord,
    SaleState,
)

# Refusal codes: final business results inside a 200 ack.
OP_ID_CONFLICT = "op_id_conflict"
CUSTOMER_EXISTS = "customer_exists"
UNKNOWN_CUSTOMER = "unknown_customer"
SALE_VOIDED = "sale_voided"
INSUFFICIENT_BALANCE = "insufficient_balance"
UNKNOWN_SALE = "unknown_sale"
ALREADY_VOIDED = "already_voided"
#: The sale was opened for another customer; its points cannot move to this one.
CUSTOMER_MISMATCH = "customer_mismatch"
#: A sale's applied total would leave the range every result must fit in.
SALE_LIMIT = "sale_limit"


@dataclass(slots=True)
class _Customer:
    """Mutable working copy of a customer while a batch is applied."""

    row: CustomerState
    balance: int
    version: int
    name: str
    phone: str | None
    email: str | None
    card_code: str | None
    updated_at: int

    @classmethod
    def of(cls, row: CustomerState) -> _Customer:
        return cls(row, row.balance, row.version, row.name, row.phone, row.email, row.card_code, row.updated_at)

    def final(self) -> CustomerState:
        return dataclasses.replace(
            self.row,
            balance=self.balance,
            version=self.version,
            name=self.name,
            phone=self.phone,
            email=self.email,
            card_code=self.card_code,
            updated_at=self.updated_at,
        )


@dataclass(slots=True)
class _Sale:
    customer_id: str
    earned: int
    redeemed: int
    voided_by: str | None
    voided_at: int | None


@dataclass(slots=True)
class _Decision:
    status: OpStatus
    code: str | None = None
    points: int = 0
    note: str | None = None


_APPLIED = OpStatus.APPLIED
_REFUSED = OpStatus.REFUSED


def _refuse(code: str) -> _Decision:
    return _Decision(_REFUSED, code)


class _Batch:
    """One batch being applied: working copies, the counter, and rows to write."""

    def __init__(self, store_id: str, brand_id: str, seq: int, state: LedgerState, now: int) -> None:
        self.store_id = store_id
        self.brand_id = brand_id
        self.seq = seq
        self.state = state
        self.now = now
        self.counter = state.counter
        self.customers: dict[str, _Customer] = {}
        self.changed: set[str] = set()
        self.sales: dict[str, _Sale] = {}
        self.changed_sales: set[str] = set()
        self.entries: list[LedgerEntry] = []
        self.conflicts: list[ConflictRecord] = []

    # ---- working state

    def customer(self, customer_id: str) -> _Customer | None:
        """The customer if it exists in this store's brand (another brand's is unknown here)."""
        cust = self.customers.get(customer_id)
        if cust is None:
            row = self.state.customers.get(customer_id)
            if row is None:
                return None
            cust = self.customers[customer_id] = _Customer.of(row)
        return cust if cust.row.brand_id == self.brand_id else None

    def customer_id_taken(self, customer_id: str) -> bool:
        return customer_id in self.customers or customer_id in self.state.customers

    def touch(self, cust: _Customer, at: int) -> None:
        self.counter += 1
        cust.version = self.counter
        cust.updated_at = at
        self.changed.add(cust.row.customer_id)

    def sale(self, sale_id: str) -> _Sale | None:
        sale = self.sales.get(sale_id)
        if sale is None:
            row = self.state.sales.get(sale_id)
            if row is None:
                return None
            sale = self.sales[sale_id] = _Sale(
                row.customer_id, row.earned, row.redeemed, row.voided_by, row.voided_at
            )
        return sale

    def open_sale(self, sale_id: str, customer_id: str) -> _Sale:
        sale = self.sale(sale_id)
        if sale is None:
            sale = self.sales[sale_id] = _Sale(customer_id, 0, 0, None, None)
            self.changed_sales.add(sale_id)
        return sale

    def move(self, cust: _Customer, op: Op, kind: str, points: int, sale_id: str | None) -> None:
        """Apply a balance change and its ledger entry together, so audits always add up."""
        if points == 0:
            return
        cust.balance += points
        self.touch(cust, op.at)
        self.entries.append(
            LedgerEntry(cust.row.customer_id, op.op_id, self.store_id, sale_id, kind, points, op.at)
        )

    def conflict(self, op: Op, cust: _Customer, requested: int) -> _Decision:
        self.conflicts.append(
            ConflictRecord(
                store_id=self.store_id,
                terminal_id=op.terminal_id,
                customer_id=op.customer_id,
                op_id=op.op_id,
                kind=op.kind.value,
                points_requested=requested,
                balance_available=cust.balance,
                at=op.at,
                created_at=self.now,
            )
        )
        return _refuse(INSUFFICIENT_BALANCE)

    # ---- one handler per op kind

    def enroll(self, op: Enroll) -> _Decision:
        if self.customer_id_taken(op.customer_id):
            return _refuse(CUSTOMER_EXISTS)
        consent = dataclasses.asdict(op.consent)
        consent["channels"] = list(op.consent.channels)
        row = CustomerState(
            customer_id=op.customer_id,
            brand_id=self.brand_id,
            name=op.name,
            phone=op.phone,
            email=op.email,
            card_code=op.card_code,
            consent=json.dumps(consent, sort_keys=True, separators=(",", ":")),
            balance=0,
            version=0,
            enrolled_store=self.store_id,
            created_at=op.at,
            updated_at=op.at,
        )
        cust = self.customers[op.customer_id] = _Customer.of(row)
        self.touch(cust, op.at)
        return _Decision(_APPLIED)

    def update_profile(self, op: UpdateProfile) -> _Decision:
        cust = self.customer(op.customer_id)
        if cust is None:
            return _refuse(UNKNOWN_CUSTOMER)
        if op.name is not None:
            cust.name = op.name
        for field in ("phone", "email", "card_code"):
            value = getattr(op, field)
            if value is not None:
                setattr(cust, field, value)
            elif field in op.clear:
                setattr(cust, field, None)
        self.touch(cust, op.at)
        return _Decision(_APPLIED)

    def _sale_for(self, op: Earn | Redeem) -> tuple[_Customer, _Sale] | _Decision:
        """The customer and the (possibly new) sale an earn or redeem moves points on, or a refusal."""
        cust = self.customer(op.customer_id)
        if cust is None:
            return _refuse(UNKNOWN_CUSTOMER)
        sale = self.open_sale(op.sale_id, op.customer_id)
        if sale.customer_id != op.customer_id:
            return _refuse(CUSTOMER_MISMATCH)
        if sale.voided_by is not None:
            return _refuse(SALE_VOIDED)
        return cust, sale

    def _version_note(self, op: Earn | Redeem) -> str | None:
        current = self.state.program_version
        if op.program_version == current:
            return None
        return f"program_version {op.program_version} differs from current {current}"

    def earn(self, op: Earn) -> _Decision:
        found = self._sale_for(op)
        if isinstance(found, _Decision):
            return found
        cust, sale = found
        if sale.earned + op.points > MAX_POINTS:
            return _refuse(SALE_LIMIT)
        sale.earned += op.points
        self.changed_sales.add(op.sale_id)
        self.move(cust, op, "earn", op.points, op.sale_id)
        return _Decision(_APPLIED, points=op.points, note=self._version_note(op))

    def redeem(self, op: Redeem) -> _Decision:
        found = self._sale_for(op)
        if isinstance(found, _Decision):
            return found
        cust, sale = found
        note = self._version_note(op)
        if op.points > cust.balance:
            decision = self.conflict(op, cust, op.points)
            decision.note = note
            return decision
        if sale.redeemed + op.points > MAX_POINTS:
            return _refuse(SALE_LIMIT)
        sale.redeemed += op.points
        self.changed_sales.add(op.sale_id)
        self.move(cust, op, "redeem", -op.points, op.sale_id)
        return _Decision(_APPLIED, points=-op.points, note=note)

    def void(self, op: Void) -> _Decision:
        sale = self.sale(op.sale_id)
        if sale is None:
            return _refuse(UNKNOWN_SALE)
        if sale.voided_by is not None:
            return _refuse(ALREADY_VOIDED)
        if sale.customer_id != op.customer_id:
            return _refuse(CUSTOMER_MISMATCH)
        cust = self.customer(sale.customer_id)
        if cust is None:  # a sale is only ever opened for a customer of this brand
            return _refuse(UNKNOWN_CUSTOMER)
        # Only what the cloud applied comes back: a refused redemption returns nothing,
        # whatever the edge believed. The balance may go negative (no clamp yet).
        self.move(cust, op, "void_earn", -sale.earned, op.sale_id)
        self.move(cust, op, "void_redeem", sale.redeemed, op.sale_id)
        note = None
        if (op.reversed_points, op.returned_points) != (sale.earned, sale.redeemed):
            note = (
                f"edge reversed {op.reversed_points}/returned {op.returned_points},"
                f" cloud applied earned {sale.earned}/redeemed {sale.redeemed}"
            )
        sale.voided_by, sale.voided_at = op.op_id, op.at
        self.changed_sales.add(op.sale_id)
        return _Decision(_APPLIED, points=sale.redeemed - sale.earned, note=note)

    def adjust(self, op: Adjust) -> _Decision:
        cust = self.customer(op.customer_id)
        if cust is None:
            return _refuse(UNKNOWN_CUSTOMER)
        if op.points < 0 and -op.points > cust.balance:
            return self.conflict(op, cust, -op.points)
        self.move(cust, op, "adjust", op.points, None)
        return _Decision(_APPLIED, points=op.points)

    def decide(self, op: Op) -> _Decision:
        if isinstance(op, Enroll):
            return self.enroll(op)
        if isinstance(op, UpdateProfile):
            return self.update_profile(op)
        if isinstance(op, Earn):
            return self.earn(op)
        if isinstance(op, Redeem):
            return self.redeem(op)
        if isinstance(op, Void):
            return self.void(op)
        if isinstance(op, Adjust):
            return self.adjust(op)
        raise TypeError(f"no rule for op kind {op.kind}")  # protocol grew a kind; a bug here

    # ---- the whole batch

    def record(self, op: Op, digest: bytes, decision: _Decision) -> OpRecord:
        version = op.program_version if isinstance(op, Earn | Redeem) else None
        return OpRecord(
            op_id=op.op_id,
            digest=digest,
            store_id=self.store_id,
            seq=self.seq,
            kind=op.kind.value,
            terminal_id=op.terminal_id,
            customer_id=op.customer_id,
            status=decision.status.value,
            code=decision.code,
            points=decision.points,
            program_version=version,
            note=decision.note,
            at=op.at,
            created_at=self.now,
        )

    def balances(self, ops: Sequence[Op]) -> tuple[Balance, ...]:
        out: dict[str, Balance] = {}
        for op in ops:
            if op.customer_id in out:
                continue
            cust = self.customer(op.customer_id)
            if cust is not None:
                out[op.customer_id] = Balance(op.customer_id, cust.balance, cust.version)
        return tuple(out.values())


def reconcile(
    *,
    store_id: str,
    brand_id: str,
    seq: int,
    ops: Sequence[Op],
    state: LedgerState,
    now: int,
) -> BatchOutcome:
    """Decide every op of one batch, in order, against ``state``; no side effects."""
    work = _Batch(store_id, brand_id, seq, state, now)
    results: list[OpResult] = []
    records: list[OpRecord] = []
    for op in ops:
        digest = op.digest()
        known = state.ops.get(op.op_id)
        if known is not None:
            if known.digest == digest:
                results.append(OpResult(op.op_id, OpStatus(known.status), known.code, known.points))
            else:
                # Not recorded: the op_id already names another op, whose result stands.
                results.append(OpResult(op.op_id, _REFUSED, OP_ID_CONFLICT, 0))
            continue
        decision = work.decide(op)
        results.append(OpResult(op.op_id, decision.status, decision.code, decision.points))
        records.append(work.record(op, digest, decision))

    customers = [work.customers[cid].final() for cid in sorted(work.changed)]
    sales = [
        SaleState(store_id, sid, s.customer_id, s.earned, s.redeemed, s.voided_by, s.voided_at)
        for sid, s in sorted(work.sales.items())
        if sid in work.changed_sales
    ]
    return BatchOutcome(
        results=tuple(results),
        balances=work.balances(ops),
        ops=tuple(records),
        customers=tuple(customers),
        sales=tuple(sales),
        entries=tuple(work.entries),
        conflicts=tuple(work.conflicts),
        counter=work.counter,
    )
