"""What the cloud itself computes for an op, to compare with what the edge computed.

Pure functions of the op, the program version it names and the customer as
the cloud knows them. The cloud applies what the edge granted (the customer
was told) and records any difference (``ops.note`` and a ``mismatches`` row)
rather than hiding it. ``None`` means there is nothing to compare.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from protocol import Earn, Enroll, LocalProtocolError, Program, Redeem
from protocol.earning import Customer, RefundPolicy, compute_earn, signup_bonus
from protocol.rewards import ProgramKind, reward_cost
from protocol.rules import amount_earn, earning_rules

#: reward_cost refuses a total above what is available; verification prices only.
_UNBOUNDED = 2**62


@dataclass(frozen=True, slots=True)
class Expected:
    """The cloud's number (None when it cannot compute one) and why it differs."""

    points: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Programs:
    """The brand's program versions a batch names, and the current one."""

    by_version: Mapping[int, Program]
    current: int | None

    def at(self, version: int | None) -> Program | None:
        return None if version is None else self.by_version.get(version)

    def refund_policy(self, version: int | None) -> RefundPolicy:
        """The policy of the named version, else the current one's; CLAMP
        (the settings' default) when neither is known."""
        program = self.at(version) or self.at(self.current)
        return RefundPolicy.CLAMP if program is None else program.options.refund_policy


def _unknown(version: int | None) -> Expected:
    return Expected(None, f"program version {version} is unknown to the cloud")


def earn(op: Earn, program: Program | None, customer: Customer) -> Expected | None:
    if program is None:
        return _unknown(op.program_version)
    if op.sale is not None:
        breakdown = compute_earn(op.sale, earning_rules(program), customer, op.at)
        points, why = breakdown.total, breakdown.reason or "rules"
    else:
        points, why = amount_earn(op.amount, program, customer), "ratio"
    if points == op.points:
        return None
    return Expected(points, f"the cloud computes {points} ({why})")


def redeem(op: Redeem, program: Program | None) -> Expected | None:
    if program is None:
        return _unknown(op.program_version)
    if not op.rewards:
        return None  # a loyalty tender, or a debit the terminal priced: the balance check is the rule
    if program.options.kind is ProgramKind.CURRENCY:
        return Expected(None, "rewards named on a currency program")
    try:
        cost = reward_cost(program.options.rewards, dict(op.rewards), _UNBOUNDED)
    except LocalProtocolError as exc:
        return Expected(None, f"the rewards cannot be priced: {exc.message}")
    if cost == op.points:
        return None
    return Expected(cost, f"the rewards cost {cost} in version {program.version}")


def enroll(op: Enroll, program: Program | None) -> Expected | None:
    customer = Customer(op.groups, op.opted_out)
    if program is None:
        return None if op.signup_bonus == 0 else _unknown(op.program_version)
    bonus = signup_bonus(earning_rules(program), customer)
    if bonus == op.signup_bonus:
        return None
    return Expected(bonus, f"the signup bonus is {bonus} in version {program.version}")
