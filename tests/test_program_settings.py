"""The program settings document: strict parsing, clear errors, canonical form."""

from __future__ import annotations

import json
from typing import Any

import pytest

from protocol import LocalProtocolError, Program
from protocol.earning import PromotionKind, RefundPolicy
from protocol.program_settings import canonical_settings, parse_settings
from protocol.rewards import ProgramKind
from protocol.rules import earning_rules


def test_a_full_document_parses() -> None:
    settings = parse_settings(json.dumps({
        "kind": "points", "include_tax": True, "visit": {"points": 1, "min_spend": 1000},
        "excluded_skus": ["gift-card"], "item_points": {"latte": 2}, "category_points": {"pastry": 1},
        "custom_amounts": {"shipping": 0}, "zero_groups": ["staff"], "signup_bonus": 50,
        "promotions": [{"kind": "buy_n", "sku": "latte", "quantity": 3, "bonus": 10}],
        "rewards": [{"reward_id": "coffee", "name": "Free coffee", "points": 50, "kind": "free_item",
                     "sku": "coffee"}],
        "refund_policy": "negative", "expiry": {"mode": "after_earned", "months": 12},
    }))
    assert settings.kind is ProgramKind.POINTS and settings.refund_policy is RefundPolicy.NEGATIVE
    assert settings.rules.promotions[0].kind is PromotionKind.BUY_N
    assert settings.rules.custom_amounts == (("shipping", 0),) and settings.rules.include_tax
    rules = earning_rules(Program("b", 1, "P", 1, 100, canonical_settings(json.dumps({"visit": {"points": 3}}))))
    assert (rules.points_per_unit, rules.unit_amount, rules.visit_points) == (1, 100, 3)


@pytest.mark.parametrize(("doc", "field"), [
    ({"rewards": [{"reward_id": f"r{i}", "name": "R", "points": 1, "kind": "free_item", "sku": "t"}
                  for i in range(16)]}, "settings.rewards"),
    ({"rewards": [{"reward_id": "r", "name": "x" * 101, "points": 1, "kind": "free_item", "sku": "t"}]},
     "settings.rewards[0].name"),
    ({"rewards": [{"reward_id": "r", "name": "R", "points": 1, "kind": "gift"}]}, "settings.rewards[0].kind"),
    ({"visit": {"points": -1}}, "settings.visit_points"),
    ({"custom_amounts": {"x": -5}}, "settings.custom_amounts"),
    ({"custom_amounts": {"x": 1.5}}, "settings.custom_amounts"),
    ({"promotions": [{"kind": "multiplier", "percent": 50}]}, "settings.promotions[0].percent"),
    ({"expiry": {"mode": "after_earned", "months": 0}}, "settings.expiry.months"),
    ({"kind": "miles"}, "settings.kind"),
    ({"refund_policy": "maybe"}, "settings.refund_policy"),
    ({"colour": "blue"}, "settings.colour"),
    ({"point_value": {"amount": -1, "points": 1}}, "settings.point_value.amount"),
    ({"point_value": {"amount": 5, "points": 0}}, "settings.point_value.points"),
    ({"point_value": {"amount": 5}}, "settings.point_value"),
])
def test_a_setting_violation_names_the_field(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        parse_settings(json.dumps(doc))
    assert info.value.field == field, info.value


def test_not_json_and_negative_ratio_are_refused() -> None:
    with pytest.raises(LocalProtocolError):
        parse_settings("{nope")
    with pytest.raises(LocalProtocolError):
        parse_settings('{"signup_bonus": NaN}')
    with pytest.raises(LocalProtocolError) as info:
        Program("b", 1, "P", -1, 100)
    assert info.value.field == "points_per_unit"


def test_canonical_form_is_stable() -> None:
    assert canonical_settings('{ "signup_bonus": 5, "kind": "points" }') == '{"kind":"points","signup_bonus":5}'


def test_what_a_point_is_worth() -> None:
    points = parse_settings(json.dumps({"kind": "points", "point_value": {"amount": 5, "points": 1}}))
    assert points.value_of_a_point is not None and points.value_of_a_point.of(1234) == 6170
    half_cent = parse_settings(json.dumps({"point_value": {"amount": 1, "points": 2}}))
    assert half_cent.value_of_a_point is not None and half_cent.value_of_a_point.of(5) == 2  # floored
    assert parse_settings('{"kind": "points"}').value_of_a_point is None  # liability in points only
    currency = parse_settings('{"kind": "currency"}').value_of_a_point
    assert currency is not None and currency.of(1999) == 1999  # loyalty cents are cents
