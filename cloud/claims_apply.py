"""The reconciler's rules for unclaimed sales, claims and card payments (pure, like ``reconciler``).

- ``UnclaimedSale``: the sale is kept, findable by its code's hash, for one claim;
  a sale id the store already used is refused ``sale_exists``.
- ``Claim`` (from an edge, for a sale of its own store): applied once. A sale
  claimed already (by another edge op or on the portal) is refused
  ``already_claimed`` and recorded as a conflict, like a refused redemption;
  a claim made after the sale's ``expires_at`` (by the op's time: an edge may
  have claimed offline) is refused ``claim_expired``. The points are the
  edge's (the customer was told), recomputed with the sale's program version
  and the claimer as the cloud knows them; a difference is a mismatch. The
  sale is then opened for the claimer with its basis, so refunds and voids
  work on it as on any earn.
- A whole-sale ``Earn`` moves its customer's card run; a link touches the
  customer, so the next pull carries it to every edge of the brand.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from protocol import Claim, Earn, UnclaimedSale
from protocol.claims import card_step, sale_bytes, sale_of
from protocol.earning import compute_earn
from protocol.refunds import EarnBasis
from protocol.rules import earning_rules

from .claims_model import ClaimableSale, ClaimRows, ClaimState
from .model import ConflictRecord
from .verification import Expected
from .working import WorkingCustomer

if TYPE_CHECKING:
    from .reconciler import _Batch

SALE_EXISTS = "sale_exists"
ALREADY_CLAIMED = "already_claimed"
CLAIM_EXPIRED = "claim_expired"
UNKNOWN_SALE = "unknown_sale"
UNKNOWN_CUSTOMER = "unknown_customer"

#: (refusal code or None, points applied, note)
Decided = tuple[str | None, int, str | None]


class ClaimWork:
    """Working copies of a batch's unclaimed sales and card runs, and the links it makes."""

    def __init__(self, state: ClaimState) -> None:
        self.claimables = dict(state.claimables)
        self.changed: set[str] = set()
        self.streaks = dict(state.streaks)
        self.changed_streaks: set[str] = set()
        self.links: list[tuple[str, str, int]] = []

    def rows(self) -> ClaimRows:
        return ClaimRows(
            tuple(self.claimables[sid] for sid in sorted(self.changed)),
            tuple((cid, self.streaks[cid]) for cid in sorted(self.changed_streaks)),
            tuple(self.links),
        )

    def unclaimed(self, work: _Batch, op: UnclaimedSale) -> Decided:
        if op.sale_id in self.claimables or work.sale(op.sale_id) is not None:
            return SALE_EXISTS, 0, None
        self.claimables[op.sale_id] = ClaimableSale(
            op.claim_hash, work.brand_id, work.store_id, op.sale_id, op.op_id, op.amount, op.program_version,
            sale_bytes(op.sale), op.at, op.expires_at,
        )
        self.changed.add(op.sale_id)
        return None, 0, None

    def claim(self, work: _Batch, op: Claim) -> Decided:
        cust = work.customer(op.customer_id)
        if cust is None:
            return UNKNOWN_CUSTOMER, 0, None
        row = self.claimables.get(op.sale_id)
        if row is None:
            return UNKNOWN_SALE, 0, None
        if row.customer_id is not None:
            work.conflicts.append(ConflictRecord(
                store_id=work.store_id, terminal_id=op.terminal_id, customer_id=op.customer_id, op_id=op.op_id,
                kind=op.kind.value, points_requested=op.points, balance_available=cust.balance, at=op.at,
                created_at=work.now,
            ))
            return ALREADY_CLAIMED, 0, None
        if op.at > row.expires_at:
            return CLAIM_EXPIRED, 0, None
        if work.sale(op.sale_id) is not None:
            return SALE_EXISTS, 0, None
        sale = sale_of(row.sale)
        program = work.programs.at(row.program_version)
        note = None
        if program is None:
            expected = Expected(None, f"program version {row.program_version} is unknown to the cloud")
        else:
            breakdown = compute_earn(sale, earning_rules(program), cust.rated_as, row.at)
            expected = Expected(breakdown.total, breakdown.reason or "rules")
        if expected.points != op.points:
            note = work.mismatch(op, op.sale_id, row.program_version, op.points, expected)
        opened = work.open_sale(op.sale_id, op.customer_id)
        opened.earned = op.points
        opened.basis = EarnBasis(sale, row.program_version, row.at, cust.rated_as).to_bytes()
        work.changed_sales.add(op.sale_id)
        work.move(cust, op, "earn", op.points, op.sale_id)
        self.claimables[op.sale_id] = dataclasses.replace(
            row, customer_id=op.customer_id, claim_op_id=op.op_id, claimed_at=op.at, claimed_via=work.store_id,
            points=op.points,
        )
        self.changed.add(op.sale_id)
        return None, op.points, note

    def card_payment(self, work: _Batch, cust: WorkingCustomer, op: Earn) -> None:
        if op.sale is None:
            return
        cid = cust.row.customer_id
        step = card_step(self.streaks.get(cid), op.sale)
        if step is None:
            return
        self.streaks[cid], link = step
        self.changed_streaks.add(cid)
        if link is not None:
            self.links.append((link, cid, op.at))
            work.touch(cust, op.at)
