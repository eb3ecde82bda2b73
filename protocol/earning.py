"""Earning rules, as pure functions shared by the edge (quote, record) and the
cloud (verify).

What a fully paid sale earns is the sum of:

- **ratio points**: ``floor(eligible / unit_amount) * points_per_unit``, where
  the base is each line's price after its *own* discount (plus its tax when
  ``include_tax``), summed over lines that are neither excluded nor on a
  custom amount. The sale-wide discount changes no product's loyalty amount.
  ``eligible`` is that base times the share of the sale *not* paid with
  loyalty, floored to a minor unit: paid 20 % with loyalty, earn on 80 %.
  An active multiplier promotion scales ratio points (floored).
- **custom amounts**: a product with a custom amount earns exactly that per
  unit (zero included), discounted or not, times the non-loyalty share
  (floored);
- **item / category points**: a fixed number per unit sold (item wins over
  its category);
- **visit points**: once per sale when the non-excluded spend (after line
  discounts, before tax) reaches the minimum;
- **promotion bonuses**: buy N of a product (one bonus per full N), spend X
  (once, on the eligible amount).

Rounding is floor, once per component per sale, so edge and cloud agree to
the point. An opted-out customer, or one in a group that earns zero, earns
nothing; an open sale earns nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from .errors import LocalProtocolError
from .sale import Sale, SaleLine
from .validate import MAX_AMOUNT, MAX_POINTS, check_range, check_text, check_types


class PromotionKind(StrEnum):
    BUY_N = "buy_n"
    SPEND_X = "spend_x"
    MULTIPLIER = "multiplier"


@dataclass(frozen=True, slots=True)
class Promotion:
    kind: PromotionKind
    bonus: int = 0
    sku: str | None = None
    quantity: int = 0
    min_spend: int = 0
    percent: int = 100
    starts_at: int | None = None
    ends_at: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.kind, str) and not isinstance(self.kind, PromotionKind):
            try:
                object.__setattr__(self, "kind", PromotionKind(self.kind))
            except ValueError as exc:
                raise LocalProtocolError("unknown promotion kind", code="invalid_value", field="kind") from exc
        check_types(self)
        check_range("bonus", self.bonus, 0, MAX_POINTS)
        check_range("min_spend", self.min_spend, 0, MAX_AMOUNT)
        check_range("percent", self.percent, 100, 1000)
        if self.kind is PromotionKind.BUY_N:
            check_text("sku", self.sku, 64, required=True)
            check_range("quantity", self.quantity, 1, 10_000)
        if self.starts_at is not None and self.ends_at is not None and self.ends_at <= self.starts_at:
            raise LocalProtocolError("a promotion must end after it starts", code="out_of_range", field="ends_at")

    def active(self, at: int) -> bool:
        return (self.starts_at is None or at >= self.starts_at) and (self.ends_at is None or at < self.ends_at)


def _check_pairs(name: str, pairs: tuple[tuple[str, int], ...], high: int) -> None:
    if len({key for key, _ in pairs}) != len(pairs):
        raise LocalProtocolError(f"{name} names a product twice", code="invalid_value", field=name)
    for key, value in pairs:
        check_text(name, key, 64, required=True)
        check_range(name, value, 0, high)


@dataclass(frozen=True, slots=True)
class EarningRules:
    points_per_unit: int
    unit_amount: int
    include_tax: bool = False
    visit_points: int = 0
    visit_min_spend: int = 0
    excluded_skus: tuple[str, ...] = ()
    item_points: tuple[tuple[str, int], ...] = ()
    category_points: tuple[tuple[str, int], ...] = ()
    custom_amounts: tuple[tuple[str, int], ...] = ()
    zero_groups: tuple[str, ...] = ()
    signup_bonus: int = 0
    promotions: tuple[Promotion, ...] = ()

    def __post_init__(self) -> None:
        check_types(self)
        check_range("points_per_unit", self.points_per_unit, 0, 10_000)
        check_range("unit_amount", self.unit_amount, 1, MAX_AMOUNT)
        check_range("visit_points", self.visit_points, 0, MAX_POINTS)
        check_range("visit_min_spend", self.visit_min_spend, 0, MAX_AMOUNT)
        check_range("signup_bonus", self.signup_bonus, 0, MAX_POINTS)
        _check_pairs("item_points", self.item_points, 10_000)
        _check_pairs("category_points", self.category_points, 10_000)
        _check_pairs("custom_amounts", self.custom_amounts, MAX_AMOUNT)
        if len(self.promotions) > 50:
            raise LocalProtocolError("at most 50 promotions", code="out_of_range", field="promotions")


@dataclass(frozen=True, slots=True)
class Customer:
    """What the rules need to know of the customer."""

    groups: tuple[str, ...] = ()
    opted_out: bool = False


@dataclass(frozen=True, slots=True)
class EarnBreakdown:
    eligible_amount: int
    ratio_points: int
    custom_points: int
    item_points: int
    visit_points: int
    bonus_points: int
    reason: str | None = None

    @property
    def total(self) -> int:
        return min(
            MAX_POINTS,
            self.ratio_points + self.custom_points + self.item_points + self.visit_points + self.bonus_points,
        )


def _nothing(reason: str) -> EarnBreakdown:
    return EarnBreakdown(0, 0, 0, 0, 0, 0, reason)


@dataclass(frozen=True, slots=True)
class Share:
    """The part of the sale not paid with loyalty, as a fraction."""

    numerator: int
    denominator: int

    @classmethod
    def of(cls, sale: Sale) -> Share:
        total = sale.total
        if total <= 0:
            return cls(0, 1)
        return cls(max(0, total - sale.loyalty_paid), total)

    def apply(self, amount: int) -> int:
        return amount * self.numerator // self.denominator


def excluded(customer: Customer, rules: EarningRules) -> str | None:
    """Why ``customer`` earns nothing under ``rules`` (opted out, a zero-earning group), or None."""
    if customer.opted_out:
        return "opted_out"
    if set(customer.groups) & set(rules.zero_groups):
        return "zero_group"
    return None


def compute_earn(sale: Sale, rules: EarningRules, customer: Customer, at: int) -> EarnBreakdown:
    """What ``sale`` earns ``customer`` under ``rules`` at time ``at`` (ms)."""
    if not sale.fully_paid:
        return _nothing("not_paid")
    reason = excluded(customer, rules)
    if reason is not None:
        return _nothing(reason)
    return _earn_lines(sale.lines, rules, Share.of(sale), at)


def signup_bonus(rules: EarningRules, customer: Customer) -> int:
    """The one-time enrollment bonus: nothing for a customer who earns nothing."""
    return 0 if excluded(customer, rules) is not None else rules.signup_bonus


def _earn_lines(lines: tuple[SaleLine, ...], rules: EarningRules, share: Share, at: int) -> EarnBreakdown:
    excluded = set(rules.excluded_skus)
    custom = dict(rules.custom_amounts)
    items = dict(rules.item_points)
    categories = dict(rules.category_points)
    base = custom_amount = item_points = spend = 0
    quantities: dict[str, int] = {}
    for line in lines:
        if line.sku in excluded:
            continue
        spend += line.net
        quantities[line.sku] = quantities.get(line.sku, 0) + line.quantity
        if line.sku in custom:
            custom_amount += custom[line.sku] * line.quantity
        else:
            base += line.net + (line.tax if rules.include_tax else 0)
        per_unit = items.get(line.sku, categories.get(line.category or "", 0))
        item_points += per_unit * line.quantity
    eligible = share.apply(base)
    ratio = (eligible // rules.unit_amount) * rules.points_per_unit
    active = [p for p in rules.promotions if p.active(at)]
    percent = max((p.percent for p in active if p.kind is PromotionKind.MULTIPLIER), default=100)
    ratio = ratio * percent // 100
    bonus = 0
    for promo in active:
        if promo.kind is PromotionKind.BUY_N and promo.sku is not None:
            bonus += promo.bonus * (quantities.get(promo.sku, 0) // promo.quantity)
        elif promo.kind is PromotionKind.SPEND_X and eligible >= promo.min_spend and eligible > 0:
            bonus += promo.bonus
    visit = rules.visit_points if rules.visit_points and spend > 0 and spend >= rules.visit_min_spend else 0
    return EarnBreakdown(
        eligible_amount=eligible,
        ratio_points=min(MAX_POINTS, ratio),
        custom_points=min(MAX_POINTS, share.apply(custom_amount)),
        item_points=min(MAX_POINTS, item_points),
        visit_points=visit,
        bonus_points=min(MAX_POINTS, bonus),
    )


# ------------------------------------------------------------------ refunds


def remaining_lines(sale: Sale, returned: Mapping[str, int]) -> tuple[SaleLine, ...]:
    """The sale's lines less the returned quantities; a line's discount and
    tax follow its quantity (floored), so a fully returned line is gone."""
    for line_id, quantity in returned.items():
        line = sale.line(line_id)
        check_range("quantity", quantity, 0, line.quantity)
    kept = []
    for line in sale.lines:
        left = line.quantity - returned.get(line.line_id, 0)
        if left <= 0:
            continue
        if left == line.quantity:
            kept.append(line)
            continue
        kept.append(replace(
            line,
            quantity=left,
            line_discount=line.line_discount * left // line.quantity,
            tax=line.tax * left // line.quantity,
        ))
    return tuple(kept)


def earned_after_returns(
    sale: Sale, rules: EarningRules, customer: Customer, at: int, returned: Mapping[str, int]
) -> int:
    """What the sale still earns once ``returned`` (line id → quantity, all
    refunds so far) is taken back. Evaluated with the rules, the customer and
    the loyalty share of the original sale, so a refund never re-rates it.
    The reversal of a refund is the drop of this value, which makes the
    reversals of any sequence of refunds add up to at most what was earned,
    and to exactly that once everything is returned."""
    original = compute_earn(sale, rules, customer, at)
    if original.reason is not None:
        return 0
    lines = remaining_lines(sale, returned)
    if not lines:
        return 0
    return min(original.total, _earn_lines(lines, rules, Share.of(sale), at).total)


def redeemed_after_returns(sale: Sale, redeemed: int, returned: Mapping[str, int]) -> int:
    """The part of what was redeemed on the sale that stays redeemed: the
    redeemed points are spread over the lines by their net price, and what
    stays is floored, so the customer gets back at least the returned share."""
    if redeemed <= 0:
        return 0
    lines = remaining_lines(sale, returned)
    if not lines:
        return 0
    subtotal = sale.subtotal
    if subtotal <= 0:
        return redeemed  # nothing to spread by: it all comes back with the last line
    return redeemed * sum(line.net for line in lines) // subtotal


class RefundPolicy(StrEnum):
    """What a reversal does when the customer already spent the points."""

    CLAMP = "clamp"  # the balance stops at zero; the shortfall is reported
    NEGATIVE = "negative"  # the balance goes below zero; reported too


def reverse(balance: int, points: int, policy: RefundPolicy) -> tuple[int, int]:
    """The balance after taking back ``points``, and the shortfall: under
    CLAMP the points that could not be taken back, under NEGATIVE the points
    this reversal took below zero. Both are reported, never hidden."""
    if points < 0:
        raise LocalProtocolError("a reversal takes back a positive number", code="out_of_range", field="points")
    if policy is RefundPolicy.CLAMP:
        taken = min(points, max(balance, 0))
        return balance - taken, points - taken
    after = balance - points
    return after, max(0, -after) - max(0, -balance)
