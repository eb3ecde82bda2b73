"""Refunds and voids, as pure functions shared by the edge and the cloud.

An earn keeps its *basis* (the sale, the program version and the customer
as they were rated, and the time) with the sale. A refund of some lines then
recomputes, from that basis and every quantity returned so far, what the sale
still earns (``earning.earned_after_returns``) and what stays redeemed on it
(``earning.redeemed_after_returns``); what is standing above those comes back.
Measuring against what is *standing* (applied less already reversed) makes
the reversals of any sequence of refunds add up to exactly what was applied
once everything is returned, and never to more, whatever the rounding.

Settling a reversal against a balance gives back the redeemed points first,
then takes back the earned points under the program's refund policy: CLAMP
stops at zero and reports what could not be taken, NEGATIVE lets the balance
go below zero and reports how far.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from .earning import Customer, EarningRules, RefundPolicy, earned_after_returns, redeemed_after_returns, reverse
from .errors import LocalProtocolError
from .ops import Earn, check_groups
from .sale import Sale, sale_from_wire
from .validate import check_range, check_types


@dataclass(frozen=True, slots=True)
class EarnBasis:
    """What a whole-sale earn was rated on."""

    sale: Sale
    program_version: int
    at: int
    customer: Customer

    def __post_init__(self) -> None:
        check_types(self)
        check_range("program_version", self.program_version, 1, 2**31)
        check_groups("groups", self.customer.groups)

    @classmethod
    def of(cls, op: Earn, customer: Customer) -> EarnBasis | None:
        """The basis of an earn op; None for an amount-only earn (no lines to refund)."""
        if op.sale is None:
            return None
        return cls(op.sale, op.program_version, op.at, customer)

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "sale": self.sale.to_wire(), "program_version": self.program_version, "at": self.at,
            "groups": list(self.customer.groups), "opted_out": self.customer.opted_out,
        }
        packed: bytes = msgpack.packb(doc, use_bin_type=True)
        return packed

    @classmethod
    def from_bytes(cls, data: bytes) -> EarnBasis:
        """The basis as stored by :meth:`to_bytes` (our own bytes: a failure is a bug or a damaged row)."""
        try:
            doc = msgpack.unpackb(data, raw=False, use_list=False)
            customer = Customer(tuple(doc["groups"]), doc["opted_out"])
            return cls(sale_from_wire(doc["sale"]), doc["program_version"], doc["at"], customer)
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            raise LocalProtocolError(f"a stored earn basis is unreadable: {exc}", code="bad_basis") from exc


def basis_version(data: bytes) -> int:
    """The program version a stored basis was rated with, without decoding its sale."""
    try:
        version = msgpack.unpackb(data, raw=False, use_list=False)["program_version"]
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
        raise LocalProtocolError(f"a stored earn basis is unreadable: {exc}", code="bad_basis") from exc
    if type(version) is not int:
        raise LocalProtocolError("a stored earn basis has no program version", code="bad_basis")
    return version


@dataclass(frozen=True, slots=True)
class Standing:
    """What is applied on a sale, and what refunds already took back of it."""

    earned: int
    earn_reversed: int
    redeemed: int
    redeem_returned: int

    @property
    def earn_left(self) -> int:
        return max(0, self.earned - self.earn_reversed)

    @property
    def redeem_left(self) -> int:
        return max(0, self.redeemed - self.redeem_returned)


@dataclass(frozen=True, slots=True)
class Reversal:
    """Earned points to take back and redeemed points to give back."""

    take: int
    give: int


def refund_reversal(basis: EarnBasis, rules: EarningRules, standing: Standing, returned: Mapping[str, int]) -> Reversal:
    """What a refund moves once ``returned`` (line id -> quantity, every
    refund so far including this one) is back: the standing earn above what
    the sale still earns, and the standing redemption above what stays
    redeemed."""
    still_earned = earned_after_returns(basis.sale, rules, basis.customer, basis.at, returned)
    still_redeemed = redeemed_after_returns(basis.sale, standing.redeemed, returned)
    return Reversal(
        take=max(0, standing.earn_left - still_earned),
        give=max(0, standing.redeem_left - still_redeemed),
    )


@dataclass(frozen=True, slots=True)
class Settlement:
    balance: int  # after the reversal
    taken: int  # earned points actually taken back
    shortfall: int  # CLAMP: points not taken back; NEGATIVE: points taken below zero

    def delta(self, give: int) -> int:
        """The balance change of a reversal that gave back ``give``."""
        return give - self.taken


def settle(balance: int, reversal: Reversal, policy: RefundPolicy) -> Settlement:
    """Give back first, then take back under ``policy`` (``earning.reverse``)."""
    after, shortfall = reverse(balance + reversal.give, reversal.take, policy)
    taken = reversal.take - shortfall if policy is RefundPolicy.CLAMP else reversal.take
    return Settlement(after, taken, shortfall)
