"""What the account page shows, computed from the ledger and the program (pure).

Balance, the points expiring within ``SOON_DAYS`` (the customer's ledger
entries made into lots, the program's expiry policy applied), ways to earn
(the program's earning rules, active promotions, the signup bonus) and ways
to redeem (the rewards catalog of a points program, or the balance as a
tender in a currency program). Amounts are minor units, shown with two
decimals; the page knows no currency symbol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from protocol import Program
from protocol.earning import PromotionKind
from protocol.expiry import DAY_MS, expires_at, expiring_within, last_activity, lots_from_entries
from protocol.rewards import ProgramKind
from protocol.rules import earning_rules

from ..engagement_model import Channel
from ..model import CustomerState, LedgerEntry

SOON_DAYS = 30
MAX_LISTED = 12


def money(minor: int) -> str:
    sign = "-" if minor < 0 else ""
    return f"{sign}{abs(minor) // 100}.{abs(minor) % 100:02d}"


def points(n: int) -> str:
    return f"{n} point" if abs(n) == 1 else f"{n} points"


@dataclass(frozen=True, slots=True)
class RewardOption:
    name: str
    points: int
    within_reach: bool


@dataclass(frozen=True, slots=True)
class ChannelConsent:
    channel: Channel
    label: str
    address_known: bool
    granted: bool


@dataclass(frozen=True, slots=True)
class AccountView:
    name: str
    balance: str
    currency: bool
    expiring_points: int
    expiring_first_at: int | None
    ways_to_earn: tuple[str, ...]
    rewards: tuple[RewardOption, ...]
    ways_to_redeem: tuple[str, ...]
    consents: tuple[ChannelConsent, ...]


def _ways_to_earn(program: Program, now: int) -> list[str]:
    rules = earning_rules(program)
    currency = program.options.kind is ProgramKind.CURRENCY

    def reward(n: int) -> str:
        return money(n) if currency else points(n)

    ways = []
    if rules.points_per_unit > 0:
        tax = "tax included" if rules.include_tax else "before tax"
        ways.append(f"{reward(rules.points_per_unit)} for every {money(rules.unit_amount)} spent ({tax})")
    if rules.visit_points > 0:
        floor = f" when you spend at least {money(rules.visit_min_spend)}" if rules.visit_min_spend else ""
        ways.append(f"{reward(rules.visit_points)} per visit{floor}")
    ways += [f"{reward(n)} for each {sku}" for sku, n in rules.item_points if n > 0]
    ways += [f"{reward(n)} for each item in {category}" for category, n in rules.category_points if n > 0]
    for promo in rules.promotions:
        if not promo.active(now):
            continue
        if promo.kind is PromotionKind.BUY_N:
            ways.append(f"Buy {promo.quantity} of {promo.sku}: {reward(promo.bonus)} bonus")
        elif promo.kind is PromotionKind.SPEND_X:
            ways.append(f"Spend {money(promo.min_spend)} in one visit: {reward(promo.bonus)} bonus")
        else:
            ways.append(f"{promo.percent}% of the usual reward on purchases")
    if rules.signup_bonus > 0:
        ways.append(f"{reward(rules.signup_bonus)} when you join")
    return ways[:MAX_LISTED]


def _expiring(program: Program, customer: CustomerState, entries: Sequence[LedgerEntry],
              now: int) -> tuple[int, int | None]:
    policy = program.options.expiry
    lots = lots_from_entries([(e.at, e.points) for e in entries])
    last = last_activity([(e.at, e.kind) for e in entries]) or customer.created_at
    soon = expiring_within(lots, policy, last, now, SOON_DAYS)
    if soon <= 0:
        return 0, None
    deadlines = [d for lot in lots if (d := expires_at(lot, policy, last)) is not None
                 and now < d <= now + SOON_DAYS * DAY_MS]
    return soon, min(deadlines) if deadlines else None


def account_view(customer: CustomerState, program: Program | None, entries: Sequence[LedgerEntry],
                 consented: frozenset[str], now: int) -> AccountView:
    currency = program is not None and program.options.kind is ProgramKind.CURRENCY
    balance = money(customer.balance) if currency else points(customer.balance)
    consents = (
        ChannelConsent(Channel.EMAIL, "Email", customer.email is not None, Channel.EMAIL.value in consented),
        ChannelConsent(Channel.PHONE, "Text messages (SMS)", customer.phone is not None,
                       Channel.PHONE.value in consented),
    )
    if program is None:
        return AccountView(customer.name, balance, currency, 0, None, (), (), (), consents)
    soon, first = _expiring(program, customer, entries, now)
    rewards = tuple(RewardOption(r.name, r.points, customer.balance >= r.points)
                    for r in sorted(program.options.rewards, key=lambda r: (r.points, r.name)))
    if currency:
        redeem: tuple[str, ...] = ("Pay all or part of a purchase with your balance at the till.",)
    elif not rewards:
        redeem = ("Ask at the till how to use your points.",)
    else:
        redeem = ()
    return AccountView(customer.name, balance, currency, soon, first, tuple(_ways_to_earn(program, now)),
                       () if currency else rewards, redeem, consents)
