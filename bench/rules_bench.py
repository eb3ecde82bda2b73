"""What the loyalty rules cost per earn: compute_earn on a typical basket, the
earn's basis kept for refunds, and a refund's recomputation."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from protocol.earning import Customer, EarningRules, Promotion, PromotionKind, compute_earn
from protocol.refunds import EarnBasis, Standing, refund_reversal
from protocol.sale import Sale, SaleLine, SaleState, Tender, TenderKind

RULES = EarningRules(
    points_per_unit=1, unit_amount=100, visit_points=1, visit_min_spend=500, excluded_skus=("gift-card",),
    item_points=(("latte", 2),), category_points=(("pastry", 1),), custom_amounts=(("shipping", 0),),
    promotions=(Promotion(PromotionKind.BUY_N, bonus=10, sku="latte", quantity=3),
                Promotion(PromotionKind.SPEND_X, bonus=25, min_spend=5_000),
                Promotion(PromotionKind.MULTIPLIER, percent=200)),
)
#: The same rules as a program's settings document (the ratio lives in the program).
SETTINGS = (
    '{"visit": {"points": 1, "min_spend": 500}, "excluded_skus": ["gift-card"], "item_points": {"latte": 2},'
    ' "category_points": {"pastry": 1}, "custom_amounts": {"shipping": 0}, "promotions": ['
    '{"kind": "buy_n", "bonus": 10, "sku": "latte", "quantity": 3},'
    ' {"kind": "spend_x", "bonus": 25, "min_spend": 5000}, {"kind": "multiplier", "percent": 200}]}'
)
SALE = Sale(
    "bench", tuple(SaleLine(f"l{i}", sku, cat, qty, price, disc, tax) for i, (sku, cat, qty, price, disc, tax) in
                   enumerate([("latte", "drink", 3, 450, 0, 60), ("croissant", "pastry", 2, 300, 50, 30),
                              ("mug", None, 1, 1_500, 0, 200), ("gift-card", None, 1, 2_500, 0, 0),
                              ("shipping", None, 1, 800, 0, 0)])),
    200, (Tender(TenderKind.LOYALTY, 500), Tender(TenderKind.CARD, 6_935, "tok")), SaleState.PAID,
)
AT = 1_790_000_000_000


def _median_us(fn: Callable[[], object], rounds: int, per_round: int) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(per_round):
            fn()
        samples.append((time.perf_counter() - started) / per_round * 1e6)
    return round(statistics.median(samples), 2)


def run(rounds: int = 5, per_round: int = 20_000) -> dict[str, float]:
    earned = compute_earn(SALE, RULES, Customer(), AT).total
    basis = EarnBasis(SALE, 1, AT, Customer())
    standing = Standing(earned, 0, 0, 0)
    return {
        "rules_us_per_earn_median": _median_us(lambda: compute_earn(SALE, RULES, Customer(), AT), rounds, per_round),
        "basis_us_per_earn_median": _median_us(basis.to_bytes, rounds, per_round),
        "refund_us_median": _median_us(lambda: refund_reversal(basis, RULES, standing, {"l0": 1}), rounds,
                                       per_round // 4),
        "lines": len(SALE.lines),
    }


if __name__ == "__main__":
    print(run())
