"""Every behaviour of DOMAIN.md with worked numbers, on the edge (through its
HTTP API on a real server) and on the cloud (the edge's signed batches into a
real cloud, on both backends): both must compute the same result.

The earning cases are test_rules_domain.py's table, run through the real
path: each case is a program version set in the cloud and installed on the
edge, a customer enrolled with the case's groups and opt-out, and the sale
earned over HTTP. After one sync the cloud, which recomputes every earn with
the version the op names, must have found no difference, and its balance must
be the edge's.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from protocol.earning import EarningRules

from . import cloudkit
from .bothkit import Both, FixedClock, edge_and_cloud, rules_settings, sale_json
from .test_rules_domain import CASES, NOW, line, sale


@pytest.fixture
async def both(tmp_path: Path, backend: cloudkit.Backend) -> AsyncIterator[Both]:
    # The cases' promotions have periods around NOW: both sides run at that instant.
    async with edge_and_cloud(tmp_path, backend, FixedClock(NOW)) as running:
        yield running


async def enroll(both: Both, name: str, *, groups: tuple[str, ...] = (), opted_out: bool = False) -> dict[str, Any]:
    body = {"name": name, "consent": {"terms_accepted": True}, "groups": list(groups), "opted_out": opted_out,
            "email": f"{name.lower().replace(' ', '.')}@example.org"}
    status, data = await both.call("POST", "/v1/customers", body)
    assert status == 201, data
    return dict(data)


async def test_every_earning_behaviour_gives_the_same_points_on_edge_and_cloud(both: Both) -> None:
    earned: dict[str, tuple[str, int]] = {}
    for number, (label, rules, the_sale, customer, at, expected) in enumerate(CASES):
        assert at == NOW
        await both.program(label, rules.points_per_unit, rules.unit_amount, rules_settings(rules))
        person = await enroll(both, f"Case {number}", groups=customer.groups, opted_out=customer.opted_out)
        status, answer = await both.call("POST", "/v1/earns", {"customer_id": person["customer_id"],
                                                             "sale": sale_json(the_sale, f"case-{number}")})
        if not the_sale.fully_paid:
            assert (status, answer["error"]["code"], expected) == (422, "sale_not_paid", 0), label
            continue
        assert status == 201, (label, answer)
        assert answer["points"] == expected, label
        earned[person["customer_id"]] = (label, expected)
    await both.settle()
    assert await both.cloud.storage.list_mismatches() == [], "the cloud computed another number"
    for customer_id, (label, expected) in earned.items():
        edge_side = (await both.customer(customer_id))["balance"]
        assert edge_side == {"confirmed": expected, "pending": 0, "available": expected}, label
        assert await both.cloud_balance(customer_id) == expected, label


async def test_the_cloud_records_an_earn_it_computes_otherwise(both: Both) -> None:
    """The customer opted out at another store: this edge does not know yet, the cloud does."""
    rules = EarningRules(1, 100)
    await both.program("one per dollar", 1, 100, rules_settings(rules))
    person = await enroll(both, "Olive")
    await both.settle()
    with both.offline():  # the edge cannot learn of the opt-out before it earns
        other = both.cloud.stores["store-a"]
        await both.cloud.send(other, [cloudkit.update(person["customer_id"], opted_out=True)])
        status, answer = await both.call("POST", "/v1/earns", {
            "customer_id": person["customer_id"], "sale": sale_json(sale(line("a", "coat", 1, 5_000)), "o-1")})
        assert (status, answer["points"]) == (201, 50)
    await both.settle()
    (mismatch,) = await both.cloud.storage.list_mismatches()
    assert (mismatch.kind, mismatch.edge_points, mismatch.cloud_points) == ("earn", 50, 0)
    assert "opted_out" in mismatch.reason
    # Applied as the edge granted it (the customer was told), and now known to the edge as opted out.
    assert await both.cloud_balance(person["customer_id"]) == 50
    assert (await both.customer(person["customer_id"]))["opted_out"] is True


# ------------------------------------------------------- redeem, refund, void


@dataclass
class Step:
    """One terminal action and what it must answer (``None``: not checked)."""

    action: str  # earn | redeem | refund | void | sync
    body: dict[str, Any] = field(default_factory=dict)
    sale_id: str = ""
    status: int = 201
    expect: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scenario:
    label: str
    points_per_unit: int
    unit_amount: int
    settings: dict[str, Any]
    start: int  # points earned (and synced) before the steps, by an amount-only earn
    steps: list[Step]
    final: int  # the balance once everything is synced, on both sides
    shortfalls: list[tuple[str, int]] = field(default_factory=list)  # (kind, points) recorded by the cloud


CATALOG = [
    {"reward_id": "coffee", "name": "Free coffee", "points": 50, "kind": "free_item", "sku": "coffee"},
    {"reward_id": "five-off", "name": "$5 off", "points": 100, "kind": "fixed_discount", "amount": 500},
]
# A coat at $60 and two hats at $10: 80 points at 1 per $1.
COAT_AND_HATS = sale(line("coat", "coat", 1, 6_000), line("hats", "hat", 2, 1_000))


def earn(sale_id: str, the_sale: Any = COAT_AND_HATS, **expect: Any) -> Step:
    return Step("earn", {"sale": sale_json(the_sale, sale_id)}, sale_id, expect=expect)


def refund(sale_id: str, *lines: tuple[str, int], status: int = 201, **expect: Any) -> Step:
    body = {"lines": [{"line_id": line_id, "quantity": quantity} for line_id, quantity in lines]}
    return Step("refund", body, sale_id, status, expect)


def redeem(sale_id: str, status: int = 201, **body: Any) -> Step:
    return Step("redeem", {"sale_id": sale_id, **body}, sale_id, status)


SYNC = Step("sync")

SCENARIOS = [
    Scenario("a return removes the loyalty of the returned items (Lightspeed X)", 1, 100, {}, 0, [
        earn("r1", points=80),
        refund("r1", ("hats", 1), reversed_points=10, returned_points=0),
        refund("r1", ("coat", 1), reversed_points=60),
    ], final=10),
    Scenario("a refund deducts what the sale earned and gives back what was redeemed on it (Lightspeed R)", 1, 100,
             {"rewards": CATALOG}, 200, [
        redeem("g1", rewards=[{"reward_id": "five-off", "count": 1}]),
        earn("g1", points=80),
        # 1,000 of the 8,000 sold comes back: 10 earned points go, 100 * 1000 / 8000 = 12.5 redeemed come back,
        # rounded so that the customer gets at least the returned share (13).
        refund("g1", ("hats", 1), reversed_points=10, returned_points=13),
        refund("g1", ("hats", 1), ("coat", 1), reversed_points=70, returned_points=87),
    ], final=200),
    Scenario("each sale is refunded on its own (Lightspeed R)", 1, 100, {}, 0, [
        earn("e1", points=80), earn("e2", points=80),
        refund("e1", ("coat", 1), reversed_points=60),
        refund("e2", ("hats", 2), reversed_points=20),
        refund("e1", ("coat", 1), status=409),  # already refunded in full: nothing is reversed twice
        refund("e2", ("scarf", 1), status=422),  # not a line of this sale
        refund("e2", ("coat", 2), status=422),  # one coat was sold
    ], final=80),
    Scenario("voiding a sale after a partial refund reverses only what is left (Lightspeed X)", 1, 100,
             {"rewards": CATALOG}, 100, [
        redeem("v1", rewards=[{"reward_id": "coffee", "count": 1}]),
        earn("v1", points=80),
        refund("v1", ("coat", 1), reversed_points=60, returned_points=38),  # 50 * 6000 / 8000 = 37.5 -> 38
        Step("void", sale_id="v1", expect={"reversed_points": 20, "returned_points": 12}),
    ], final=100),
    Scenario("a refund after the points were spent: clamp at zero, and report", 1, 100, {"refund_policy": "clamp"},
             0, [
        earn("c1", points=80), SYNC,
        redeem("c2", points=80),
        refund("c1", ("coat", 1), ("hats", 2), reversed_points=80, shortfall=80),
    ], final=0, shortfalls=[("refund", 80)]),
    Scenario("a refund after the points were spent: a negative balance, reported", 1, 100,
             {"refund_policy": "negative"}, 0, [
        earn("n1", points=80), SYNC,
        redeem("n2", points=50),
        refund("n1", ("coat", 1), reversed_points=60, shortfall=30),
        Step("void", sale_id="n1", expect={"reversed_points": 20, "shortfall": 20}),
    ], final=-50, shortfalls=[("refund", 30), ("void", 20)]),
    Scenario("several rewards, and the same reward twice, in one sale (Square)", 1, 100, {"rewards": CATALOG}, 250, [
        redeem("m1", rewards=[{"reward_id": "coffee", "count": 2}, {"reward_id": "five-off", "count": 1}]),
        redeem("m2", status=422, rewards=[{"reward_id": "coffee", "count": 2}]),  # 50 left: refused
        redeem("m3", status=422, rewards=[{"reward_id": "free-car", "count": 1}]),
    ], final=50),
    Scenario("currency: pay part of a sale with the balance, earn on the rest (Lightspeed X)", 1, 20,
             {"kind": "currency"}, 500, [
        redeem("t1", status=422, amount=501),  # never more than the balance
        redeem("t1", amount=400),
        # $50 of which $4 in loyalty: 5 loyalty cents per $1 on the other $46 = 230.
        earn("t1", sale(line("a", "coat", 1, 5_000), loyalty=400), points=230),
    ], final=330),
]


async def seed(both: Both, customer_id: str, points: int) -> None:
    if points:
        status, data = await both.call("POST", "/v1/adjustments", {"customer_id": customer_id, "points": points,
                                                                  "reason": "opening balance", "actor": "test"})
        assert status == 201, data
    await both.settle()


async def run_step(both: Both, customer_id: str, step: Step, label: str) -> None:
    if step.action == "sync":
        await both.settle()
        return
    if step.action == "earn":
        status, data = await both.call("POST", "/v1/earns", {"customer_id": customer_id, **step.body})
    elif step.action == "redeem":
        status, data = await both.call("POST", "/v1/redemptions", {"customer_id": customer_id, **step.body})
    elif step.action == "refund":
        status, data = await both.call("POST", f"/v1/sales/{step.sale_id}/refunds", step.body)
    else:
        status, data = await both.call("POST", f"/v1/sales/{step.sale_id}/void")
    assert status == step.status, (label, step, data)
    if status >= 400:
        assert set(data) == {"error"} and data["error"]["field"], (label, data)
    for key, value in step.expect.items():
        assert data[key] == value, (label, step, key, data)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.label for s in SCENARIOS])
async def test_redeem_refund_and_void_agree_on_edge_and_cloud(both: Both, scenario: Scenario) -> None:
    await both.program(scenario.label, scenario.points_per_unit, scenario.unit_amount, json.dumps(scenario.settings))
    person = await enroll(both, "Scenario")
    customer_id = person["customer_id"]
    await seed(both, customer_id, scenario.start)
    for step in scenario.steps:
        before = both.unacked()
        await run_step(both, customer_id, step, scenario.label)
        if step.status >= 400:
            assert both.unacked() == before, "a refused request queued something"
    projected = await both.customer(customer_id)
    assert projected["balance"]["confirmed"] + projected["balance"]["pending"] == scenario.final, projected
    await both.settle()
    assert await both.cloud.storage.list_mismatches() == [], scenario.label
    assert (await both.customer(customer_id))["balance"]["confirmed"] == scenario.final
    assert await both.cloud_balance(customer_id) == scenario.final
    shortfalls = [(s.kind, s.points) for s in await both.cloud.storage.list_shortfalls()
                  if s.customer_id == customer_id]
    assert shortfalls == scenario.shortfalls


async def test_the_signup_bonus_is_pending_then_granted_once(both: Both) -> None:
    await both.program("welcome", 1, 100, json.dumps({"signup_bonus": 50, "zero_groups": ["staff"]}))
    person = await enroll(both, "New Nora")
    assert person["balance"] == {"confirmed": 0, "pending": 50, "available": 0}  # the edge shows it as pending
    staff = await enroll(both, "Staff Sam", groups=("staff",))
    assert staff["balance"]["pending"] == 0  # a group that earns zero gets no bonus either
    await both.settle()
    assert (await both.customer(person["customer_id"]))["balance"] == {"confirmed": 50, "pending": 0,
                                                                       "available": 50}
    assert await both.cloud_balance(person["customer_id"]) == 50
    assert await both.cloud_balance(staff["customer_id"]) == 0
    assert await both.cloud.storage.list_mismatches() == []
    # Once per customer, ever: the ledger itself refuses a second bonus entry.
    with pytest.raises(Exception, match=r"(?i)unique"):
        await both.cloud.execute(
            "INSERT INTO ledger_entries (customer_id, op_id, store_id, sale_id, kind, points, at) VALUES"
            f" ('{person['customer_id']}', 'x', 'store-a', NULL, 'signup_bonus', 50, 1)"
        )


async def test_expiry_runs_in_the_cloud_and_the_edge_never_lets_an_expired_point_go(
    tmp_path: Path, backend: cloudkit.Backend
) -> None:
    clock = FixedClock(NOW)
    month = 31 * 24 * 3600 * 1000
    async with edge_and_cloud(tmp_path, backend, clock) as both:
        await both.program("expiring", 1, 100, json.dumps({"expiry": {"mode": "after_earned", "months": 1}}))
        person = await enroll(both, "Short Lived")
        cid = person["customer_id"]
        status, data = await both.call("POST", "/v1/earns", {"customer_id": cid,
                                                           "sale": sale_json(sale(line("a", "coat", 1, 5_000)), "x")})
        assert (status, data["points"]) == (201, 50)
        await both.settle()
        profile = await both.customer(cid)
        # The ack brought the balance, the downlink of the same version the expiry date.
        assert (profile["balance"]["available"], profile["expiring_soon"]) == (50, 50)
        clock.at_ms = NOW + month  # a month later, and the cloud has not run expiry yet
        both.cloud.clock.offset += month
        profile = await both.customer(cid)
        assert (profile["balance"]["confirmed"], profile["balance"]["available"]) == (50, 0)
        status, data = await both.call("POST", "/v1/redemptions", {"customer_id": cid, "sale_id": "late",
                                                                  "points": 1})
        assert (status, data["error"]["code"]) == (422, "insufficient_balance")
        summary = await both.cloud.storage.run_expiry(NOW + month)
        assert (summary.customers_expired, summary.points_expired) == (1, 50)
        await both.settle()
        profile = await both.customer(cid)
        assert (profile["balance"], profile["expiring_soon"]) == (
            {"confirmed": 0, "pending": 0, "available": 0}, 0)
        assert await both.cloud_balance(cid) == 0
