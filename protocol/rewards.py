"""What a customer can spend: rewards of a points program, or the balance of
a currency program used as a tender.

Square's limits hold: at most 15 rewards, a name of at most 100 characters.
A reward is a fixed discount, a percentage off the sale, or a free item.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from .errors import LocalProtocolError
from .sale import Sale
from .validate import MAX_AMOUNT, MAX_POINTS, check_range, check_text, check_types

MAX_REWARDS = 15
MAX_REWARD_NAME = 100


class RewardKind(StrEnum):
    FIXED_DISCOUNT = "fixed_discount"
    PERCENTAGE = "percentage"
    FREE_ITEM = "free_item"


@dataclass(frozen=True, slots=True)
class Reward:
    reward_id: str
    name: str
    points: int
    kind: RewardKind
    amount: int = 0
    percent: int = 0
    sku: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.kind, str) and not isinstance(self.kind, RewardKind):
            try:
                object.__setattr__(self, "kind", RewardKind(self.kind))
            except ValueError as exc:
                raise LocalProtocolError("unknown reward kind", code="invalid_value", field="kind") from exc
        check_types(self)
        check_text("reward_id", self.reward_id, 64, required=True)
        check_text("name", self.name, MAX_REWARD_NAME, required=True)
        check_range("points", self.points, 1, MAX_POINTS)
        if self.kind is RewardKind.FIXED_DISCOUNT:
            check_range("amount", self.amount, 1, MAX_AMOUNT)
        elif self.kind is RewardKind.PERCENTAGE:
            check_range("percent", self.percent, 1, 100)
        else:
            check_text("sku", self.sku, 64, required=True)


def check_catalog(rewards: tuple[Reward, ...]) -> None:
    if len(rewards) > MAX_REWARDS:
        raise LocalProtocolError(f"a program has at most {MAX_REWARDS} rewards", code="too_many_rewards",
                                 field="rewards")
    if len({r.reward_id for r in rewards}) != len(rewards):
        raise LocalProtocolError("reward ids repeat", code="invalid_value", field="rewards")


class ProgramKind(StrEnum):
    POINTS = "points"
    CURRENCY = "currency"


def rewards_within(rewards: tuple[Reward, ...], available: int) -> list[Reward]:
    """The rewards the customer can take now, cheapest first."""
    return sorted((r for r in rewards if r.points <= available), key=lambda r: (r.points, r.reward_id))


def reward_cost(rewards: tuple[Reward, ...], chosen: Mapping[str, int], available: int) -> int:
    """Points for ``chosen`` (reward id → count; the same reward may repeat),
    refused if a reward is unknown or the total exceeds ``available``."""
    by_id = {r.reward_id: r for r in rewards}
    total = 0
    for reward_id, count in chosen.items():
        reward = by_id.get(reward_id)
        if reward is None:
            raise LocalProtocolError(f"no reward {reward_id!r} in this program", code="unknown_reward",
                                     field="rewards")
        check_range("count", count, 1, 100)
        total += reward.points * count
    if total == 0:
        raise LocalProtocolError("choose at least one reward", code="missing", field="rewards")
    if total > available:
        raise LocalProtocolError(f"the rewards cost {total} points; {available} available",
                                 code="insufficient_balance", field="rewards")
    return total


def max_loyalty_tender(sale: Sale, available: int) -> int:
    """Currency programs: the most of the balance this sale can take as a
    tender (never more than what is still due, never more than available)."""
    due = max(0, sale.total - sum(t.amount for t in sale.tenders if t.kind != "loyalty"))
    return max(0, min(available, due))
