"""The two ops of retroactive claims: a sale recorded with no profile, and its claim.

A whole-sale earn with no customer and no linked card is recorded as an
``UnclaimedSale``: it earns nothing yet, and its receipt carries a claim
code whose SHA-256 travels in the op (the code itself never leaves the
terminal's answer). A ``Claim`` attaches such a sale of the same store to a
customer, who then earns its points computed by the same rules with the
program version the sale names. The cloud applies at most one claim per
sale, whether it comes from an edge or from the portal.

``UnclaimedSale`` has no customer: its ``customer_id`` is ``NO_CUSTOMER``
(the nil UUID), which no customer can have (customer ids are UUIDv7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .errors import LocalProtocolError
from .ops import MAX_TIME_MS, OP_TYPES, Op, OpKind
from .sale import Sale
from .validate import MAX_AMOUNT, MAX_POINTS, check_range, check_text

NO_CUSTOMER = "00000000-0000-0000-0000-000000000000"
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True, kw_only=True)
class UnclaimedSale(Op):
    kind: ClassVar[OpKind] = OpKind.UNCLAIMED_SALE
    sale_id: str
    amount: int
    program_version: int
    sale: Sale
    #: Hex SHA-256 of the normalised claim code (``protocol.claims.code_hash``).
    claim_hash: str
    #: The last instant a claim is honoured (the receipt says so).
    expires_at: int

    def _validate(self) -> None:
        if self.customer_id != NO_CUSTOMER:
            raise LocalProtocolError("an unclaimed sale has no customer", code="invalid_value", field="customer_id")
        check_text("sale_id", self.sale_id, 64, required=True)
        if self.sale.sale_id != self.sale_id:
            raise LocalProtocolError("the sale's id differs from sale_id", code="invalid_value", field="sale.sale_id")
        check_range("amount", self.amount, 1, MAX_AMOUNT)
        if self.sale.total != self.amount:
            raise LocalProtocolError("amount must be the sale's total", code="invalid_value", field="amount")
        if not self.sale.fully_paid:
            raise LocalProtocolError("only a fully paid sale earns", code="sale_not_paid", field="sale.state")
        check_range("program_version", self.program_version, 1, 2**31)
        if len(self.claim_hash) != 64 or not set(self.claim_hash) <= _HEX:
            raise LocalProtocolError("claim_hash must be 64 lower-case hex digits", code="invalid_value",
                                     field="claim_hash")
        check_range("expires_at", self.expires_at, self.at, MAX_TIME_MS)


@dataclass(frozen=True, slots=True, kw_only=True)
class Claim(Op):
    """``customer_id`` claims the unclaimed sale ``sale_id`` of the same store;
    ``points`` is what the edge computed (the cloud recomputes and reports a difference)."""

    kind: ClassVar[OpKind] = OpKind.CLAIM
    sale_id: str
    points: int
    program_version: int

    def _validate(self) -> None:
        check_text("sale_id", self.sale_id, 64, required=True)
        check_range("points", self.points, 0, MAX_POINTS)
        check_range("program_version", self.program_version, 1, 2**31)


# Registered here rather than in ops.py, so the op registry stays one place to decode from.
OP_TYPES.update({cls.kind.value: cls for cls in (UnclaimedSale, Claim)})
