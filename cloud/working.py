"""Mutable working copies of customers and sales while a batch is applied.

The reconciler reads them from the loaded ``LedgerState`` rows, changes them
op by op, and writes their final state back as rows.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from protocol.earning import Customer as RulesCustomer
from protocol.refunds import Standing

from .model import CustomerState


@dataclass(slots=True)
class WorkingCustomer:
    """Mutable working copy of a customer while a batch is applied."""

    row: CustomerState
    balance: int
    version: int
    name: str
    phone: str | None
    email: str | None
    card_code: str | None
    updated_at: int
    groups: tuple[str, ...]
    opted_out: bool

    @classmethod
    def of(cls, row: CustomerState) -> WorkingCustomer:
        return cls(row, row.balance, row.version, row.name, row.phone, row.email, row.card_code, row.updated_at,
                   tuple(json.loads(row.groups)), row.opted_out)

    @property
    def rated_as(self) -> RulesCustomer:
        return RulesCustomer(self.groups, self.opted_out)

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
            groups=groups_json(self.groups),
            opted_out=self.opted_out,
        )


def groups_json(groups: tuple[str, ...]) -> str:
    return json.dumps(sorted(groups), separators=(",", ":"))


@dataclass(slots=True)
class WorkingSale:
    customer_id: str
    earned: int
    redeemed: int
    voided_by: str | None
    voided_at: int | None
    basis: bytes | None = None
    returned: str = "{}"
    earn_reversed: int = 0
    redeem_returned: int = 0

    @property
    def standing(self) -> Standing:
        return Standing(self.earned, self.earn_reversed, self.redeemed, self.redeem_returned)
