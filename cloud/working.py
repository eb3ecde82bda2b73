"""Mutable working copies of customers and sales while a batch is applied.

The reconciler reads them from the loaded ``LedgerState`` rows, changes them
op by op, and writes their final state back as rows.
"""

from __future__ import annotations

import functools
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
                   _parsed_groups(row.groups), row.opted_out)

    @property
    def rated_as(self) -> RulesCustomer:
        return RulesCustomer(self.groups, self.opted_out)

    def final(self) -> CustomerState:
        row = self.row
        groups = self.groups
        # Most batches leave groups alone: the tuple ``of`` parsed is still there, and its
        # canonical text is known without encoding it again.
        text = _canonical_groups(row.groups) if groups is _parsed_groups(row.groups) else groups_json(groups)
        # Field by field: dataclasses.replace costs several times as much, on every customer of a batch.
        return CustomerState(row.customer_id, row.brand_id, self.name, self.phone, self.email, self.card_code,
                             row.consent, self.balance, self.version, row.enrolled_store, row.created_at,
                             self.updated_at, text, self.opted_out)


def groups_json(groups: tuple[str, ...]) -> str:
    return json.dumps(sorted(groups), separators=(",", ":"))


# A brand has a handful of distinct group lists ("[]" for most customers), so a small cache
# saves a JSON parse per customer loaded and an encode per customer written.
@functools.lru_cache(maxsize=256)
def _parsed_groups(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


@functools.lru_cache(maxsize=256)
def _canonical_groups(text: str) -> str:
    return groups_json(_parsed_groups(text))


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
