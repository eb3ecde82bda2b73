"""A program's settings beyond its earning ratio, as one JSON document.

The document is versioned with the program (every change is a new program
version), travels inside the signed downlink as canonical JSON, and is parsed
strictly: an unknown key, a 16th reward, a 101-character reward name or a
negative amount is an error that names the field, and nothing changes.

    {"kind": "points", "include_tax": false,
     "visit": {"points": 1, "min_spend": 1000}, "excluded_skus": ["gift-card"],
     "item_points": {"latte": 2}, "category_points": {"pastry": 1},
     "custom_amounts": {"shipping": 0}, "zero_groups": ["staff"], "signup_bonus": 50,
     "promotions": [{"kind": "buy_n", "sku": "latte", "quantity": 3, "bonus": 10}],
     "rewards": [{"reward_id": "coffee", "name": "Free coffee", "points": 50,
                  "kind": "free_item", "sku": "coffee"}],
     "refund_policy": "clamp", "expiry": {"mode": "after_earned", "months": 12},
     "point_value": {"amount": 5, "points": 1}, "claim_window_days": 30}

``point_value`` is what points are worth to the merchant's accountant:
``amount`` minor units per ``points`` points (5 cents a point above). A
currency program's points are its minor units, so it needs none; a points
program without it has its liability reported in points only.
``claim_window_days`` (1 to 365, default 30) is how long a receipt's claim
code of a sale recorded without a profile stays valid (``protocol.claims``).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, replace
from typing import Any

from .earning import EarningRules, Promotion, RefundPolicy
from .errors import LocalProtocolError
from .expiry import ExpiryPolicy
from .rewards import ProgramKind, Reward, check_catalog
from .validate import MAX_AMOUNT, check_range, check_types

MAX_SETTINGS_BYTES = 64 * 1024
_KEYS = {
    "kind", "include_tax", "visit", "excluded_skus", "item_points", "category_points", "custom_amounts",
    "zero_groups", "signup_bonus", "promotions", "rewards", "refund_policy", "expiry", "point_value",
    "claim_window_days",
}


#: The ratio lives in the program itself; the rules inside the settings carry this neutral one.
_NEUTRAL_RATIO: dict[str, Any] = {"points_per_unit": 1, "unit_amount": 1}


def _neutral_rules() -> EarningRules:
    return EarningRules(points_per_unit=1, unit_amount=1)


@dataclass(frozen=True, slots=True)
class PointValue:
    """``amount`` minor units of currency per ``points`` points."""

    amount: int
    points: int

    def __post_init__(self) -> None:
        check_types(self)
        check_range("amount", self.amount, 0, MAX_AMOUNT)
        check_range("points", self.points, 1, 1_000_000)

    def of(self, points: int) -> int:
        """The value of ``points`` in minor units, floored (toward minus infinity when negative)."""
        return points * self.amount // self.points


#: A currency program's balance is loyalty money: a point is a minor unit.
CURRENCY_POINT_VALUE = PointValue(1, 1)


@dataclass(frozen=True, slots=True)
class ProgramSettings:
    kind: ProgramKind = ProgramKind.POINTS
    rules: EarningRules = field(default_factory=_neutral_rules)
    rewards: tuple[Reward, ...] = ()
    refund_policy: RefundPolicy = RefundPolicy.CLAMP
    expiry: ExpiryPolicy = field(default_factory=ExpiryPolicy)
    point_value: PointValue | None = None
    claim_window_days: int = 30

    @property
    def value_of_a_point(self) -> PointValue | None:
        """What the accountant counts a point as, or None when the program does not say."""
        if self.point_value is not None:
            return self.point_value
        return CURRENCY_POINT_VALUE if self.kind is ProgramKind.CURRENCY else None

    def earning_rules(self, points_per_unit: int, unit_amount: int) -> EarningRules:
        return replace(self.rules, points_per_unit=points_per_unit, unit_amount=unit_amount)


def _fail(field: str, message: str, code: str = "invalid_value") -> LocalProtocolError:
    return LocalProtocolError(message, code=code, field=f"settings.{field}")


def _object(value: Any, field: str, keys: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(field, f"{field} must be an object", "invalid_type")
    unknown = sorted(set(value) - keys)
    if unknown:
        raise _fail(f"{field}.{unknown[0]}" if field else unknown[0], f"unknown setting {unknown[0]!r}",
                    "unknown_field")
    return value


def _strings(value: Any, field: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(field, f"{field} must be a list of strings", "invalid_type")
    return tuple(value)


def _pairs(value: Any, field: str) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value.values()
    ):
        raise _fail(field, f"{field} must map names to whole numbers", "invalid_type")
    return tuple(sorted(value.items()))


def _build(cls: Any, kwargs: dict[str, Any], field: str) -> Any:
    try:
        return cls(**kwargs)
    except LocalProtocolError as exc:
        raise _fail(f"{field}.{exc.field}", exc.message, exc.code) from exc
    except TypeError as exc:
        raise _fail(field, f"{field} has unknown or missing keys: {exc}", "invalid_shape") from exc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


@functools.lru_cache(maxsize=64)
def parse_settings(text: str) -> ProgramSettings:
    """Settings from their JSON document; LocalProtocolError naming the field."""
    if len(text.encode()) > MAX_SETTINGS_BYTES:
        raise _fail("", f"settings are larger than {MAX_SETTINGS_BYTES} bytes", "too_large")
    try:
        raw = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise _fail("", f"settings are not valid JSON: {exc}", "invalid_json") from exc
    doc = _object(raw, "", _KEYS)
    kw: dict[str, Any] = {}
    rules: dict[str, Any] = dict(_NEUTRAL_RATIO)
    if "kind" in doc:
        if doc["kind"] not in {k.value for k in ProgramKind}:
            raise _fail("kind", "kind must be points or currency")
        kw["kind"] = ProgramKind(doc["kind"])
    if "include_tax" in doc:
        if not isinstance(doc["include_tax"], bool):
            raise _fail("include_tax", "include_tax must be true or false", "invalid_type")
        rules["include_tax"] = doc["include_tax"]
    if "visit" in doc:
        visit = _object(doc["visit"], "visit", {"points", "min_spend"})
        rules["visit_points"] = visit.get("points", 0)
        rules["visit_min_spend"] = visit.get("min_spend", 0)
    for name in ("excluded_skus", "zero_groups"):
        if name in doc:
            rules[name] = _strings(doc[name], name)
    for name in ("item_points", "category_points", "custom_amounts"):
        if name in doc:
            rules[name] = _pairs(doc[name], name)
    if "signup_bonus" in doc:
        rules["signup_bonus"] = doc["signup_bonus"]
    if "promotions" in doc:
        if not isinstance(doc["promotions"], list):
            raise _fail("promotions", "promotions must be a list", "invalid_type")
        rules["promotions"] = tuple(
            _build(Promotion, dict(_object(p, f"promotions[{i}]", set(Promotion.__dataclass_fields__))),
                   f"promotions[{i}]")
            for i, p in enumerate(doc["promotions"])
        )
    if "rewards" in doc:
        if not isinstance(doc["rewards"], list):
            raise _fail("rewards", "rewards must be a list", "invalid_type")
        rewards = tuple(
            _build(Reward, dict(_object(r, f"rewards[{i}]", set(Reward.__dataclass_fields__))), f"rewards[{i}]")
            for i, r in enumerate(doc["rewards"])
        )
        try:
            check_catalog(rewards)
        except LocalProtocolError as exc:
            raise _fail("rewards", exc.message, exc.code) from exc
        kw["rewards"] = rewards
    if "refund_policy" in doc:
        if doc["refund_policy"] not in {p.value for p in RefundPolicy}:
            raise _fail("refund_policy", "refund_policy must be clamp or negative")
        kw["refund_policy"] = RefundPolicy(doc["refund_policy"])
    if "point_value" in doc:
        kw["point_value"] = _build(PointValue, dict(_object(doc["point_value"], "point_value", {"amount", "points"})),
                                   "point_value")
    if "claim_window_days" in doc:
        days = doc["claim_window_days"]
        if type(days) is not int or not 1 <= days <= 365:
            raise _fail("claim_window_days", "claim_window_days must be a whole number of days, 1 to 365")
        kw["claim_window_days"] = days
    if "expiry" in doc:
        kw["expiry"] = _build(ExpiryPolicy, dict(_object(doc["expiry"], "expiry", {"mode", "months"})), "expiry")
    try:
        kw["rules"] = EarningRules(**rules)
    except LocalProtocolError as exc:
        raise _fail(str(exc.field), exc.message, exc.code) from exc
    settings: ProgramSettings = _build(ProgramSettings, kw, "")
    return settings


def canonical_settings(text: str) -> str:
    """The settings document re-encoded with sorted keys, after validation."""
    parse_settings(text)
    return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
