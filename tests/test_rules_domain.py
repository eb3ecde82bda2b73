"""Every earning, redeeming and reversal behaviour of DOMAIN.md, with worked
numbers, on the pure rules that both the edge and the cloud run."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import LocalProtocolError
from protocol.earning import (
    Customer,
    EarningRules,
    Promotion,
    PromotionKind,
    RefundPolicy,
    compute_earn,
    earned_after_returns,
    redeemed_after_returns,
    reverse,
)
from protocol.rewards import Reward, RewardKind, check_catalog, max_loyalty_tender, reward_cost, rewards_within
from protocol.sale import Sale, SaleLine, SaleState, Tender, TenderKind, looks_like_card_number

NOW = 1_790_000_000_000


def line(line_id: str, sku: str, qty: int, price: int, *, discount: int = 0, tax: int = 0,
         category: str | None = None) -> SaleLine:
    return SaleLine(line_id, sku, category, qty, price, discount, tax)


def sale(*lines: SaleLine, sale_discount: int = 0, loyalty: int = 0, state: str = "paid",
         paid: int | None = None) -> Sale:
    draft = Sale("s-1", tuple(lines), sale_discount, (), SaleState(state))
    due = draft.total if paid is None else paid
    tenders = []
    if loyalty:
        tenders.append(Tender(TenderKind.LOYALTY, loyalty))
    if due - loyalty > 0:
        tenders.append(Tender(TenderKind.CARD, due - loyalty, "tok_visa_4242"))
    return Sale("s-1", tuple(lines), sale_discount, tuple(tenders), SaleState(state))


ONE_PER_5 = EarningRules(points_per_unit=1, unit_amount=500)  # Square: 1 point per $5
NOBODY = Customer()

# (behaviour, rules, sale, customer, at, expected total points)
CASES: list[tuple[str, EarningRules, Sale, Customer, int, int]] = [
    ("per amount spent, before tax: $23.00 + $2.30 tax at 1 per $5 -> 4",
     ONE_PER_5, sale(line("a", "mug", 1, 2_300, tax=230)), NOBODY, NOW, 4),
    ("per amount spent, with tax as a setting: $25.30 -> 5",
     EarningRules(1, 500, include_tax=True), sale(line("a", "mug", 1, 2_300, tax=230)), NOBODY, NOW, 5),
    ("floor per sale, not per line: 3 lines of $3 = $9 -> 1 (not 0+0+0)",
     ONE_PER_5, sale(line("a", "x", 1, 300), line("b", "y", 1, 300), line("c", "z", 1, 300)), NOBODY, NOW, 1),
    ("per visit with a minimum spend: $12 >= $10 -> 1 visit point",
     EarningRules(0, 100, visit_points=1, visit_min_spend=1_000), sale(line("a", "latte", 2, 600)), NOBODY, NOW, 1),
    ("per visit below the minimum: $6 < $10 -> 0",
     EarningRules(0, 100, visit_points=1, visit_min_spend=1_000), sale(line("a", "latte", 1, 600)), NOBODY, NOW, 0),
    ("per visit, excluded items do not count toward the minimum: $6 + $20 gift card -> 0",
     EarningRules(0, 100, visit_points=1, visit_min_spend=1_000, excluded_skus=("gift-card",)),
     sale(line("a", "latte", 1, 600), line("b", "gift-card", 1, 2_000)), NOBODY, NOW, 0),
    ("per item: filter coffee 1, latte 2, sandwich 3 -> 1 + 2*2 + 3 = 8",
     EarningRules(0, 100, item_points=(("filter", 1), ("latte", 2), ("sandwich", 3))),
     sale(line("a", "filter", 1, 250), line("b", "latte", 2, 450), line("c", "sandwich", 1, 900)), NOBODY, NOW, 8),
    ("per category: 2 per pastry, the item rule wins over its category",
     EarningRules(0, 100, item_points=(("croissant", 5),), category_points=(("pastry", 2),)),
     sale(line("a", "croissant", 1, 300, category="pastry"), line("b", "scone", 3, 300, category="pastry")),
     NOBODY, NOW, 5 + 6),
    ("custom amount per product: shipping earns 0, the rest 1 per $1",
     EarningRules(1, 100, custom_amounts=(("shipping", 0),)),
     sale(line("a", "book", 1, 2_000), line("b", "shipping", 1, 800)), NOBODY, NOW, 20),
    ("a custom amount is unchanged by a discount: 50 per unit even at 50 % off",
     EarningRules(1, 100, custom_amounts=(("kettle", 50),)),
     sale(line("a", "kettle", 1, 4_000, discount=2_000)), NOBODY, NOW, 50),
    ("ratio earning uses the discounted line price: $40 - $10 -> 30",
     EarningRules(1, 100), sale(line("a", "lamp", 1, 4_000, discount=1_000)), NOBODY, NOW, 30),
    ("the sale-wide discount changes no product's loyalty amount: $40, $10 off the sale -> 40",
     EarningRules(1, 100), sale(line("a", "lamp", 1, 4_000), sale_discount=1_000), NOBODY, NOW, 40),
    ("only a fully paid sale earns: open -> 0",
     EarningRules(1, 100), sale(line("a", "lamp", 1, 4_000), state="open"), NOBODY, NOW, 0),
    ("only a fully paid sale earns: layaway half paid -> 0",
     EarningRules(1, 100), sale(line("a", "lamp", 1, 4_000), state="closed", paid=2_000), NOBODY, NOW, 0),
    ("a layaway earns when it closes fully paid -> 40",
     EarningRules(1, 100), sale(line("a", "lamp", 1, 4_000), state="closed"), NOBODY, NOW, 40),
    ("20 % paid with loyalty earns on the other 80 %: $50, $10 loyalty -> 40",
     EarningRules(1, 100), sale(line("a", "coat", 1, 5_000), loyalty=1_000), NOBODY, NOW, 40),
    ("a customer group that earns zero (staff) -> 0",
     EarningRules(1, 100, zero_groups=("staff",)), sale(line("a", "coat", 1, 5_000)), Customer(("staff",)), NOW, 0),
    ("an opted-out customer earns nothing -> 0",
     EarningRules(1, 100), sale(line("a", "coat", 1, 5_000)), Customer(opted_out=True), NOW, 0),
    ("promotion, buy 3 coffees earn 10 (per full 3): 7 coffees -> 2 bonuses + ratio",
     EarningRules(1, 100, promotions=(Promotion(PromotionKind.BUY_N, bonus=10, sku="coffee", quantity=3),)),
     sale(line("a", "coffee", 7, 300)), NOBODY, NOW, 21 + 20),
    ("promotion, spend $50 earn 25: $60 -> 60 + 25",
     EarningRules(1, 100, promotions=(Promotion(PromotionKind.SPEND_X, bonus=25, min_spend=5_000),)),
     sale(line("a", "coat", 1, 6_000)), NOBODY, NOW, 85),
    ("promotion, double points during the period -> 2 x 60",
     EarningRules(1, 100, promotions=(Promotion(PromotionKind.MULTIPLIER, percent=200, starts_at=NOW - 1,
                                                ends_at=NOW + 1),)),
     sale(line("a", "coat", 1, 6_000)), NOBODY, NOW, 120),
    ("promotion outside its period does nothing -> 60",
     EarningRules(1, 100, promotions=(Promotion(PromotionKind.MULTIPLIER, percent=200, starts_at=NOW + 1),)),
     sale(line("a", "coat", 1, 6_000)), NOBODY, NOW, 60),
    ("currency program, 5 loyalty cents per $1 (1 per 20 cents) on $19.99 -> 99 cents",
     EarningRules(1, 20), sale(line("a", "scarf", 1, 1_999)), NOBODY, NOW, 99),
]


@pytest.mark.parametrize(("label", "rules", "the_sale", "customer", "at", "expected"), CASES,
                         ids=[c[0] for c in CASES])
def test_earning_behaviours(label: str, rules: EarningRules, the_sale: Sale, customer: Customer, at: int,
                            expected: int) -> None:
    assert compute_earn(the_sale, rules, customer, at).total == expected, label


def test_breakdown_says_why_nothing_was_earned() -> None:
    assert compute_earn(sale(line("a", "x", 1, 100), state="open"), ONE_PER_5, NOBODY, NOW).reason == "not_paid"
    assert compute_earn(sale(line("a", "x", 1, 100)), ONE_PER_5, Customer(opted_out=True), NOW).reason == "opted_out"


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(("build", "field"), [
    (lambda: EarningRules(-1, 100), "points_per_unit"),
    (lambda: EarningRules(1, 0), "unit_amount"),
    (lambda: EarningRules(1, 100, custom_amounts=(("a", 1), ("a", 2))), "custom_amounts"),
    (lambda: Promotion(PromotionKind.BUY_N, bonus=1, quantity=2), "sku"),
    (lambda: Promotion(PromotionKind.MULTIPLIER, percent=50), "percent"),
    (lambda: Reward("r1", "x" * 101, 10, RewardKind.FREE_ITEM, sku="tea"), "name"),
    (lambda: Reward("r1", "Tea", 10, RewardKind.PERCENTAGE, percent=0), "percent"),
    (lambda: Reward("r1", "Tea", 0, RewardKind.FREE_ITEM, sku="tea"), "points"),
    (lambda: check_catalog(tuple(Reward(f"r{i}", f"R {i}", 10, RewardKind.FREE_ITEM, sku="t") for i in range(16))),
     "rewards"),
])
def test_bad_settings_are_clear_errors(build: Any, field: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        build()
    assert info.value.field == field


def test_fifteen_rewards_are_fine() -> None:
    check_catalog(tuple(Reward(f"r{i}", f"R {i}", 10, RewardKind.FREE_ITEM, sku="t") for i in range(15)))


# ------------------------------------------------------------ redeeming

CATALOG = (
    Reward("coffee", "Free coffee", 50, RewardKind.FREE_ITEM, sku="coffee"),
    Reward("five-off", "$5 off", 100, RewardKind.FIXED_DISCOUNT, amount=500),
    Reward("ten-pct", "10 % off", 150, RewardKind.PERCENTAGE, percent=10),
)


def test_rewards_the_customer_can_take() -> None:
    assert [r.reward_id for r in rewards_within(CATALOG, 120)] == ["coffee", "five-off"]
    assert rewards_within(CATALOG, 10) == []


def test_several_rewards_and_the_same_reward_twice_in_one_sale() -> None:
    assert reward_cost(CATALOG, {"coffee": 2, "five-off": 1}, 200) == 200
    with pytest.raises(LocalProtocolError) as info:
        reward_cost(CATALOG, {"coffee": 2, "five-off": 1}, 199)
    assert info.value.code == "insufficient_balance"
    with pytest.raises(LocalProtocolError):
        reward_cost(CATALOG, {"nope": 1}, 1_000)


def test_loyalty_tender_up_to_the_balance_and_what_is_due() -> None:
    the_sale = Sale("s", (line("a", "coat", 1, 5_000),), 0, (Tender(TenderKind.CASH, 1_000),), SaleState.OPEN)
    assert max_loyalty_tender(the_sale, 10_000) == 4_000  # all that is still due
    assert max_loyalty_tender(the_sale, 1_500) == 1_500  # all the balance
    assert max_loyalty_tender(the_sale, 0) == 0  # the tender is greyed out


def test_card_numbers_are_refused_and_tokens_kept() -> None:
    assert looks_like_card_number("4242 4242 4242 4242")
    assert not looks_like_card_number("4242 4242 4242 4241")
    with pytest.raises(LocalProtocolError) as info:
        Tender(TenderKind.CARD, 100, "4242-4242-4242-4242")
    assert info.value.code == "card_number_refused" and "4242" not in info.value.message
    assert Tender(TenderKind.CARD, 100, "tok_1Nx8").card_token == "tok_1Nx8"


# ------------------------------------------------------------ reversals


def test_a_return_removes_the_loyalty_of_the_returned_items() -> None:
    rules = EarningRules(1, 100)
    the_sale = sale(line("a", "coat", 1, 6_000), line("b", "hat", 2, 1_000))
    earned = compute_earn(the_sale, rules, NOBODY, NOW).total
    assert earned == 80
    assert earned - earned_after_returns(the_sale, rules, NOBODY, NOW, {"b": 1}) == 10
    assert earned - earned_after_returns(the_sale, rules, NOBODY, NOW, {"b": 2, "a": 1}) == 80
    with pytest.raises(LocalProtocolError):
        earned_after_returns(the_sale, rules, NOBODY, NOW, {"zz": 1})
    with pytest.raises(LocalProtocolError):
        earned_after_returns(the_sale, rules, NOBODY, NOW, {"b": 3})


def test_a_refund_gives_back_the_redeemed_share_of_the_returned_lines() -> None:
    the_sale = sale(line("a", "coat", 1, 6_000), line("b", "hat", 2, 1_000))
    assert redeemed_after_returns(the_sale, 80, {"b": 1}) == 70  # 1,000 of 8,000 returned: 10 back
    assert redeemed_after_returns(the_sale, 80, {"a": 1, "b": 2}) == 0


@pytest.mark.parametrize(("policy", "balance", "points", "after", "shortfall"), [
    (RefundPolicy.CLAMP, 30, 50, 0, 20),
    (RefundPolicy.NEGATIVE, 30, 50, -20, 20),
    (RefundPolicy.CLAMP, 80, 50, 30, 0),
    (RefundPolicy.NEGATIVE, -5, 10, -15, 10),
])
def test_a_refund_after_the_points_were_spent(policy: RefundPolicy, balance: int, points: int, after: int,
                                              shortfall: int) -> None:
    assert reverse(balance, points, policy) == (after, shortfall)


lines_st = st.lists(
    st.tuples(st.integers(1, 5), st.integers(0, 20_000), st.integers(0, 100), st.integers(0, 2_000),
              st.sampled_from(["a", "b", "c", "gift", "ship"])),
    min_size=1, max_size=6,
)
rules_st = st.builds(
    EarningRules,
    points_per_unit=st.integers(0, 5),
    unit_amount=st.integers(1, 1_000),
    include_tax=st.booleans(),
    visit_points=st.integers(0, 5),
    visit_min_spend=st.integers(0, 5_000),
    excluded_skus=st.just(("gift",)),
    item_points=st.sampled_from([(), (("a", 2),)]),
    custom_amounts=st.sampled_from([(), (("ship", 0),), (("ship", 7),)]),
    promotions=st.sampled_from([(), (Promotion(PromotionKind.BUY_N, bonus=5, sku="b", quantity=2),),
                                (Promotion(PromotionKind.SPEND_X, bonus=9, min_spend=3_000),),
                                (Promotion(PromotionKind.MULTIPLIER, percent=150),)]),
)


@settings(max_examples=300, deadline=None)
@given(raw_lines=lines_st, rules=rules_st, loyalty_pct=st.integers(0, 100), data=st.data(),
       balance_before=st.integers(0, 500), policy=st.sampled_from(list(RefundPolicy)))
def test_any_sequence_of_refunds_reverses_at_most_what_was_earned(
    raw_lines: list[tuple[int, int, int, int, str]], rules: EarningRules, loyalty_pct: int, data: st.DataObject,
    balance_before: int, policy: RefundPolicy,
) -> None:
    sale_lines = tuple(
        SaleLine(f"l{i}", sku, None, qty, price, min(discount_pct * qty * price // 100, qty * price), tax)
        for i, (qty, price, discount_pct, tax, sku) in enumerate(raw_lines)
    )
    draft = Sale("s", sale_lines, 0, (), SaleState.PAID)
    loyalty = draft.total * loyalty_pct // 100
    tenders = tuple(t for t in (Tender(TenderKind.LOYALTY, loyalty) if loyalty else None,
                                Tender(TenderKind.CASH, draft.total - loyalty) if draft.total - loyalty else None)
                    if t is not None)
    the_sale = Sale("s", sale_lines, 0, tenders, SaleState.PAID)
    earned = compute_earn(the_sale, rules, NOBODY, NOW).total
    balance = balance_before + earned
    returned: dict[str, int] = {}
    reversed_total = 0
    still_earned = earned
    while True:
        open_lines = [ln for ln in sale_lines if returned.get(ln.line_id, 0) < ln.quantity]
        if not open_lines or not data.draw(st.booleans(), label="refund again"):
            break
        target = data.draw(st.sampled_from(open_lines), label="line")
        left = target.quantity - returned.get(target.line_id, 0)
        returned[target.line_id] = returned.get(target.line_id, 0) + data.draw(st.integers(1, left), label="qty")
        now_earned = earned_after_returns(the_sale, rules, NOBODY, NOW, returned)
        reversal = still_earned - now_earned
        assert reversal >= 0, "a refund never gives points"
        still_earned = now_earned
        balance, _ = reverse(balance, reversal, policy)
        reversed_total += reversal
        assert reversed_total <= earned
        if policy is RefundPolicy.CLAMP:
            assert balance >= 0
    everything = {ln.line_id: ln.quantity for ln in sale_lines}
    if returned == everything:
        assert reversed_total == earned
        assert balance == balance_before  # nothing was spent meanwhile: back where it started
