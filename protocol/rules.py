"""Loyalty rules as pure functions, shared by edge (to quote and record) and
cloud (to verify). Rounding is floor per sale, so both sides always agree.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .earning import Customer, EarningRules, excluded
from .errors import LocalProtocolError
from .program_settings import ProgramSettings, parse_settings
from .validate import MAX_AMOUNT, MAX_POINTS, check_range, check_text, check_types


@dataclass(frozen=True, slots=True)
class Program:
    """A brand's program settings at one version.

    Earning: ``points_per_unit`` points for every whole ``unit_amount`` minor
    units spent (1 point per 100 cents is ``Program(..., 1, 100)``).
    """

    brand_id: str
    version: int
    name: str
    points_per_unit: int
    unit_amount: int
    settings: str = "{}"

    def __post_init__(self) -> None:
        check_types(self)
        check_text("name", self.name, 100, required=True)
        check_range("version", self.version, 1, 2**31)
        check_range("points_per_unit", self.points_per_unit, 0, 10_000)
        check_range("unit_amount", self.unit_amount, 1, MAX_AMOUNT)
        parse_settings(self.settings)

    @property
    def options(self) -> ProgramSettings:
        """The parsed settings document (kind, rules, rewards, refunds, expiry)."""
        return parse_settings(self.settings)


def earn_points(amount: int, program: Program) -> int:
    """Points a fully paid sale of ``amount`` minor units earns: floor per sale."""
    if amount < 0:
        raise LocalProtocolError("amount must not be negative", code="out_of_range", field="amount")
    return min(MAX_POINTS, (amount // program.unit_amount) * program.points_per_unit)


def amount_earn(amount: int, program: Program, customer: Customer) -> int:
    """An amount-only earn (no lines): the ratio, and nothing for a customer
    who is opted out or in a group that earns zero."""
    if excluded(customer, earning_rules(program)) is not None:
        return 0
    return earn_points(amount, program)


def available_points(confirmed: int, pending_debits: int, expired: int = 0) -> int:
    """What may be redeemed now: the confirmed balance less every pending
    debit and every point whose expiry date has passed.

    Pending earns do not count: the cloud may still refuse or reverse them.
    Expired points are taken out even before the cloud has run expiry, and
    pending debits are not assumed to have used them: never an expired point
    redeemed offline.
    """
    return max(0, confirmed - pending_debits - expired)


@functools.lru_cache(maxsize=64)
def earning_rules(program: Program) -> EarningRules:
    """The earning rules a program version implies (cached: a version never changes, and this runs on every earn)."""
    return program.options.earning_rules(program.points_per_unit, program.unit_amount)
