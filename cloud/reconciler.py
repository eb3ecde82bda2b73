"""The apply step: loaded ledger state + a batch's ops -> results and rows.

Pure: no I/O, no clock (``now`` is passed in), so it is unit-testable and the
same code serves every storage backend. The caller has already verified the
envelope and the store's sequence; this decides each op exactly once:

1. deduplicate: an op_id already stored returns its stored result when the
   content digest matches, and is refused ``op_id_conflict`` when it differs;
2. order: ops apply in batch order, each seeing the effects of the previous;
3. conflict rules: a debit above the confirmed balance is refused (and
   recorded as a conflict); a void or a refund takes back only what was
   really applied, under the program's refund policy (clamp at zero or go
   negative; either way the shortfall is recorded);
4. verification: earns, redemptions and signup bonuses are applied as the
   edge computed them (the customer was told) and recomputed with the
   program version the op names and the customer as the cloud knows them;
   a difference is an ``ops.note`` and a ``mismatches`` row;
5. results: one OpResult per op and the final Balance of every customer the
   batch names.

Every balance change and profile change bumps the brand's change counter and
stamps the customer with it, which is what pulls page on.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from protocol import (
    Adjust,
    Balance,
    Claim,
    Earn,
    Enroll,
    LocalProtocolError,
    Op,
    OpKind,
    OpResult,
    OpStatus,
    Program,
    Redeem,
    Refund,
    UnclaimedSale,
    UpdateProfile,
    Void,
)
from protocol.earning import RefundPolicy
from protocol.privacy import scrub_basis
from protocol.refunds import EarnBasis, Reversal, refund_reversal, settle
from protocol.rules import earning_rules
from protocol.sale import returned_after
from protocol.validate import MAX_POINTS

from . import verification
from .claims_apply import ClaimWork
from .erasure import is_erased
from .model import (
    BatchOutcome,
    ConflictRecord,
    CustomerState,
    LedgerEntry,
    LedgerState,
    MismatchRecord,
    OpRecord,
    SaleState,
    ShortfallRecord,
)
from .verification import Expected, Programs
from .working import WorkingCustomer, WorkingSale, groups_json

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
#: A refund of a sale whose lines the cloud does not hold (an amount-only or refused earn).
NO_SALE_LINES = "no_sale_lines"


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

    def __init__(self, store_id: str, brand_id: str, seq: int, state: LedgerState, programs: Programs,
                 now: int) -> None:
        self.store_id = store_id
        self.brand_id = brand_id
        self.seq = seq
        self.state = state
        self.programs = programs
        self.now = now
        self.counter = state.counter
        self.customers: dict[str, WorkingCustomer] = {}
        self.changed: set[str] = set()
        self.sales: dict[str, WorkingSale] = {}
        self.changed_sales: set[str] = set()
        self.entries: list[LedgerEntry] = []
        self.conflicts: list[ConflictRecord] = []
        self.mismatches: list[MismatchRecord] = []
        self.shortfalls: list[ShortfallRecord] = []
        self.claim_work = ClaimWork(state.claims)
        self.merged = state.merged

    # ---- working state

    def customer(self, customer_id: str) -> WorkingCustomer | None:
        """The customer if it exists in this store's brand (another brand's is unknown here); a merged
        duplicate's id gives its survivor."""
        merged = self.merged
        if merged:
            customer_id = merged.get(customer_id, customer_id)
        cust = self.customers.get(customer_id)
        if cust is None:
            row = self.state.customers.get(customer_id)
            if row is None:
                return None
            cust = self.customers[customer_id] = WorkingCustomer.of(row)
        return cust if cust.row.brand_id == self.brand_id else None

    def customer_id_taken(self, customer_id: str) -> bool:
        return customer_id in self.customers or customer_id in self.state.customers

    def touch(self, cust: WorkingCustomer, at: int) -> None:
        self.counter += 1
        cust.version = self.counter
        cust.updated_at = at
        self.changed.add(cust.row.customer_id)

    def sale(self, sale_id: str) -> WorkingSale | None:
        sale = self.sales.get(sale_id)
        if sale is None:
            row = self.state.sales.get(sale_id)
            if row is None:
                return None
            sale = self.sales[sale_id] = WorkingSale(
                row.customer_id, row.earned, row.redeemed, row.voided_by, row.voided_at, row.basis, row.returned,
                row.earn_reversed, row.redeem_returned,
            )
        return sale

    def open_sale(self, sale_id: str, customer_id: str) -> WorkingSale:
        sale = self.sale(sale_id)
        if sale is None:
            sale = self.sales[sale_id] = WorkingSale(customer_id, 0, 0, None, None)
            self.changed_sales.add(sale_id)
        return sale

    def move(self, cust: WorkingCustomer, op: Op, kind: str, points: int, sale_id: str | None) -> None:
        """Apply a balance change and its ledger entry together, so audits always add up."""
        if points == 0:
            return
        cust.balance += points
        # touch(), inline: this runs for most ops.
        self.counter += 1
        cust.version = self.counter
        cust.updated_at = op.at
        self.changed.add(cust.row.customer_id)
        self.entries.append(
            LedgerEntry(cust.row.customer_id, op.op_id, self.store_id, sale_id, kind, points, op.at)
        )

    def conflict(self, op: Op, cust: WorkingCustomer, requested: int) -> _Decision:
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

    def mismatch(self, op: Op, sale_id: str | None, version: int | None, edge_points: int,
                 expected: Expected) -> str:
        """Record that the cloud computed otherwise; the op's note."""
        self.mismatches.append(MismatchRecord(
            store_id=self.store_id, op_id=op.op_id, customer_id=op.customer_id, sale_id=sale_id,
            kind=op.kind.value, program_version=version, edge_points=edge_points, cloud_points=expected.points,
            reason=expected.reason, at=op.at, created_at=self.now,
        ))
        return f"edge {edge_points}, cloud {expected.points}: {expected.reason}"

    def reverse(self, cust: WorkingCustomer, op: Void | Refund, sale: WorkingSale, reversal: Reversal,
                policy: RefundPolicy) -> int:
        """Give back, then take back under ``policy``; record any shortfall. The net change."""
        settled = settle(cust.balance, reversal, policy)
        self.move(cust, op, f"{op.kind.value}_redeem", reversal.give, op.sale_id)
        self.move(cust, op, f"{op.kind.value}_earn", -settled.taken, op.sale_id)
        sale.earn_reversed += reversal.take
        sale.redeem_returned += reversal.give
        self.changed_sales.add(op.sale_id)
        if settled.shortfall:
            self.shortfalls.append(ShortfallRecord(
                store_id=self.store_id, op_id=op.op_id, customer_id=op.customer_id, sale_id=op.sale_id,
                kind=op.kind.value, policy=policy.value, points=settled.shortfall, balance_after=cust.balance,
                at=op.at, created_at=self.now,
            ))
        return settled.delta(reversal.give)

    # ---- one handler per op kind

    def enroll(self, op: Enroll) -> _Decision:
        if self.customer_id_taken(op.customer_id):
            return _refuse(CUSTOMER_EXISTS)
        # Its flat fields as they are: dataclasses.asdict deep-copies every value on the way.
        consent = {f.name: getattr(op.consent, f.name) for f in dataclasses.fields(op.consent)}
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
            groups=groups_json(op.groups),
            opted_out=op.opted_out,
        )
        cust = self.customers[op.customer_id] = WorkingCustomer.of(row)
        self.touch(cust, op.at)
        # A new customer can have no bonus yet: once per customer, ever (the ledger's unique index agrees).
        self.move(cust, op, "signup_bonus", op.signup_bonus, None)
        version = op.program_version if op.program_version is not None else self.programs.current
        expected = verification.enroll(op, self.programs.at(version))
        note = None if expected is None else self.mismatch(op, None, version, op.signup_bonus, expected)
        return _Decision(_APPLIED, points=op.signup_bonus, note=note)

    def update_profile(self, op: UpdateProfile) -> _Decision:
        cust = self.customer(op.customer_id)
        if cust is None:
            return _refuse(UNKNOWN_CUSTOMER)
        # An erased profile takes no personal data again (a late op from an offline edge):
        # its groups and opt-out still apply, they decide what it earns.
        erased = is_erased(cust.row.consent)
        if op.name is not None and not erased:
            cust.name = op.name
        for field in ("phone", "email", "card_code"):
            value = getattr(op, field)
            if erased:
                continue
            if value is not None:
                setattr(cust, field, value)
            elif field in op.clear:
                setattr(cust, field, None)
        if op.groups is not None:
            cust.groups = op.groups
        if op.opted_out is not None:
            cust.opted_out = op.opted_out
        self.touch(cust, op.at)
        return _Decision(_APPLIED, note="customer erased: profile fields dropped" if erased else None)

    def _sale_for(self, op: Earn | Redeem) -> tuple[WorkingCustomer, WorkingSale] | _Decision:
        """The customer and the (possibly new) sale an earn or redeem moves points on, or a refusal."""
        cust = self.customer(op.customer_id)
        if cust is None:
            return _refuse(UNKNOWN_CUSTOMER)
        customer_id = cust.row.customer_id
        sale = self.sales.get(op.sale_id)
        if sale is None:
            sale = self.open_sale(op.sale_id, customer_id)
        owner = sale.customer_id
        if self.merged:
            owner = self.merged.get(owner, owner)
        if owner != customer_id:
            return _refuse(CUSTOMER_MISMATCH)
        if sale.voided_by is not None:
            return _refuse(SALE_VOIDED)
        return cust, sale

    def _version_note(self, op: Earn | Redeem) -> str | None:
        current = self.state.program_version
        if op.program_version == current:
            return None
        return f"program_version {op.program_version} differs from current {current}"

    def _noted(self, op: Earn | Redeem, edge_points: int, expected: Expected | None) -> str | None:
        if expected is None and op.program_version == self.state.program_version:
            return None  # the common case: nothing to say, said without a call
        note = self._version_note(op)
        if expected is None:
            return note
        mismatch = self.mismatch(op, op.sale_id, op.program_version, edge_points, expected)
        return mismatch if note is None else f"{note}; {mismatch}"

    def earn(self, op: Earn) -> _Decision:
        found = self._sale_for(op)
        if isinstance(found, _Decision):
            return found
        cust, sale = found
        points = op.points
        if sale.earned + points > MAX_POINTS:
            return _refuse(SALE_LIMIT)
        sale.earned += points
        rated_as = cust.rated_as
        # Only an earn with lines has a basis to refund from and a card to link; an amount-only
        # earn (the common one) skips both.
        lines = op.sale
        erased = lines is not None and is_erased(cust.row.consent)
        if lines is not None:
            basis = EarnBasis(lines, op.program_version, op.at, rated_as)
            if sale.basis is None:
                # An erased customer's sale keeps its lines and amounts, not its card tokens.
                sale.basis = scrub_basis(basis.to_bytes()) if erased else basis.to_bytes()
        self.changed_sales.add(op.sale_id)
        self.move(cust, op, "earn", points, op.sale_id)
        if lines is not None and not erased:  # an erased person's card is never linked again
            self.claim_work.card_payment(self, cust, op)
        expected = verification.earn(op, self.programs.at(op.program_version), rated_as)
        return _Decision(_APPLIED, points=points, note=self._noted(op, points, expected))

    def redeem(self, op: Redeem) -> _Decision:
        found = self._sale_for(op)
        if isinstance(found, _Decision):
            return found
        cust, sale = found
        note = self._noted(op, op.points, verification.redeem(op, self.programs.at(op.program_version)))
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

    def _reversible(self, op: Void | Refund) -> tuple[WorkingCustomer, WorkingSale] | _Decision:
        sale = self.sale(op.sale_id)
        if sale is None:
            return _refuse(UNKNOWN_SALE)
        if sale.voided_by is not None:
            return _refuse(ALREADY_VOIDED if isinstance(op, Void) else SALE_VOIDED)
        merged = self.state.merged
        if merged.get(sale.customer_id, sale.customer_id) != merged.get(op.customer_id, op.customer_id):
            return _refuse(CUSTOMER_MISMATCH)
        cust = self.customer(sale.customer_id)
        if cust is None:  # a sale is only ever opened for a customer of this brand
            return _refuse(UNKNOWN_CUSTOMER)
        return cust, sale

    def _reversal_note(self, op: Void | Refund, cloud: Reversal) -> str | None:
        edge = Reversal(op.reversed_points, op.returned_points)
        if edge == cloud:
            return None
        expected = Expected(cloud.give - cloud.take, f"the cloud takes back {cloud.take} and gives back {cloud.give}")
        return self.mismatch(op, op.sale_id, op.program_version, edge.give - edge.take, expected)

    def void(self, op: Void) -> _Decision:
        found = self._reversible(op)
        if isinstance(found, _Decision):
            return found
        cust, sale = found
        # Only what the cloud applied and no refund took back comes back: a refused
        # redemption returns nothing, whatever the edge believed.
        standing = sale.standing
        reversal = Reversal(standing.earn_left, standing.redeem_left)
        note = self._reversal_note(op, reversal)
        points = self.reverse(cust, op, sale, reversal, self.programs.refund_policy(op.program_version))
        sale.voided_by, sale.voided_at = op.op_id, op.at
        return _Decision(_APPLIED, points=points, note=note)

    def refund(self, op: Refund) -> _Decision:
        found = self._reversible(op)
        if isinstance(found, _Decision):
            return found
        cust, sale = found
        if sale.basis is None:
            return _refuse(NO_SALE_LINES)
        basis = EarnBasis.from_bytes(sale.basis)
        try:
            returned = returned_after(basis.sale, json.loads(sale.returned), op.lines)
        except LocalProtocolError as exc:
            return _refuse(exc.code)
        program = self.programs.at(basis.program_version)
        if program is None:  # the earn named a version the cloud never had: the edge's numbers, bounded
            standing = sale.standing
            reversal = Reversal(min(op.reversed_points, standing.earn_left), min(op.returned_points,
                                                                                 standing.redeem_left))
        else:
            reversal = refund_reversal(basis, earning_rules(program), sale.standing, returned)
        note = self._reversal_note(op, reversal)
        sale.returned = json.dumps(returned, sort_keys=True, separators=(",", ":"))
        points = self.reverse(cust, op, sale, reversal, self.programs.refund_policy(op.program_version))
        return _Decision(_APPLIED, points=points, note=note)

    def adjust(self, op: Adjust) -> _Decision:
        cust = self.customer(op.customer_id)
        if cust is None:
            return _refuse(UNKNOWN_CUSTOMER)
        if op.points < 0 and -op.points > cust.balance:
            return self.conflict(op, cust, -op.points)
        self.move(cust, op, "adjust", op.points, None)
        return _Decision(_APPLIED, points=op.points)

    def decide(self, op: Op) -> _Decision:
        # The common kinds by exact type, one lookup; the chain below has the claim kinds.
        handler = _HANDLERS.get(type(op))
        if handler is not None:
            return handler(self, op)
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
        if isinstance(op, Refund):
            return self.refund(op)
        if isinstance(op, UnclaimedSale | Claim):
            code, points, note = (self.claim_work.unclaimed(self, op) if isinstance(op, UnclaimedSale)
                                  else self.claim_work.claim(self, op))
            return _refuse(code) if code is not None else _Decision(_APPLIED, points=points, note=note)
        raise TypeError(f"no rule for op kind {op.kind}")  # protocol grew a kind; a bug here

    # ---- the whole batch

    def record(self, op: Op, digest: bytes, decision: _Decision) -> OpRecord:
        # Positional, and the enums' values from a dict: enum ``.value`` is a slow descriptor.
        return OpRecord(
            op.op_id, digest, self.store_id, self.seq, _KIND_VALUES[op.kind], op.terminal_id, op.customer_id,
            _STATUS_VALUES[decision.status], decision.code, decision.points, getattr(op, "program_version", None),
            decision.note, op.at, self.now,
        )

    def balances(self, ops: Sequence[Op]) -> tuple[Balance, ...]:
        merged, loaded, brand_id = self.merged, self.customers, self.brand_id
        out: dict[str, Balance] = {}
        seen: set[str] = set()  # customer ids already answered or unknown: one lookup each
        for op in ops:
            cid = op.customer_id
            if cid in seen:
                continue
            seen.add(cid)
            if merged:
                cid = merged.get(cid, cid)  # a merged id: its survivor's
                if cid in out:
                    continue
                cust = self.customer(cid)
            else:  # what customer() does, without a call for the customers an op already loaded
                cust = loaded.get(cid)
                if cust is None:
                    cust = self.customer(cid)
                elif cust.row.brand_id != brand_id:
                    cust = None
            if cust is not None:
                out[cid] = Balance(cid, cust.balance, cust.version)
        return tuple(out.values())


_HANDLERS: dict[type[Op], Callable[[_Batch, Any], _Decision]] = {
    Earn: _Batch.earn, Redeem: _Batch.redeem, Adjust: _Batch.adjust, Void: _Batch.void, Refund: _Batch.refund,
    Enroll: _Batch.enroll, UpdateProfile: _Batch.update_profile,
}
_KIND_VALUES = {kind: kind.value for kind in OpKind}
_STATUS_VALUES = {status: status.value for status in OpStatus}


def reconcile(
    *,
    store_id: str,
    brand_id: str,
    seq: int,
    ops: Sequence[Op],
    state: LedgerState,
    now: int,
    programs: Mapping[int, Program] | None = None,
) -> BatchOutcome:
    """Decide every op of one batch, in order, against ``state`` and the
    brand's ``programs`` (by version: those the ops and their sales name, and
    the current one); no side effects."""
    work = _Batch(store_id, brand_id, seq, state, Programs(programs or {}, state.program_version), now)
    results: list[OpResult] = []
    records: list[OpRecord] = []
    known_ops = state.ops
    decide, record = work.decide, work.record
    for op in ops:
        digest = op.digest()
        known = known_ops.get(op.op_id) if known_ops else None
        if known is not None:
            if known.digest == digest:
                results.append(OpResult(op.op_id, OpStatus(known.status), known.code, known.points))
            else:
                # Not recorded: the op_id already names another op, whose result stands.
                results.append(OpResult(op.op_id, _REFUSED, OP_ID_CONFLICT, 0))
            continue
        decision = decide(op)
        results.append(OpResult(op.op_id, decision.status, decision.code, decision.points))
        records.append(record(op, digest, decision))

    customers = [work.customers[cid].final() for cid in sorted(work.changed)]
    sales = [
        SaleState(store_id, sid, s.customer_id, s.earned, s.redeemed, s.voided_by, s.voided_at, s.basis,
                  s.returned, s.earn_reversed, s.redeem_returned)
        for sid in sorted(work.changed_sales)
        if (s := work.sales.get(sid)) is not None
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
        mismatches=tuple(work.mismatches),
        shortfalls=tuple(work.shortfalls),
        claim_rows=work.claim_work.rows(),
    )
