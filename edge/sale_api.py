"""Terminal routes on a sale: quote, earn, redeem, void, refund.

Every one uses the program this node received from the cloud and names its
version in the op, so the cloud verifies with the same rules. The customer's
groups and opt-out are read before the op is built: they decide what the
rules grant, and the earn keeps them with its sale for later refunds.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from protocol import Earn, Program, Redeem, Refund, Void, uuid7
from protocol.earning import Customer as RulesCustomer
from protocol.earning import RefundPolicy, compute_earn
from protocol.rewards import ProgramKind, max_loyalty_tender, reward_cost, rewards_within
from protocol.rules import amount_earn, earning_rules
from protocol.sale import MAX_LINES, MAX_QUANTITY
from protocol.validate import MAX_AMOUNT, MAX_POINTS

from . import claim_api, sale_writes
from .api_support import customer_id, live_customer_id, now_ms, write
from .appkeys import STORE
from .errors import InvalidInput, NotFound, StoreError, Unprocessable
from .inputs import check_fields, get_int, get_object, get_str, read_json
from .sale_input import parse_sale
from .writes import Action

#: Distinct rewards one redemption may name: the catalog's own limit.
MAX_REWARD_LINES = 15


def _program(request: web.Request) -> Program:
    program = request.app[STORE].program()
    if program is None:
        raise StoreError("the loyalty program has not been received from the cloud yet", code="no_program")
    return program


def _sale_id(request: web.Request) -> str:
    sale_id = request.match_info["sale_id"]
    if not sale_id or len(sale_id) > 64:
        raise NotFound("no loyalty activity for this sale", code="unknown_sale", field="sale_id")
    return sale_id


def _objects(body: dict[str, Any], name: str, most: int) -> list[dict[str, Any]]:
    value = body.get(name)
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise InvalidInput(f"{name} must be a list of objects", code="invalid_type", field=name)
    if not 1 <= len(value) <= most:
        raise InvalidInput(f"{name} holds 1 to {most} entries", code="out_of_range", field=name)
    return value


async def earn(request: web.Request) -> web.Response:
    """Either a whole sale (lines, discounts, tenders: the rules decide), or a
    paid amount (the program's ratio only, for terminals that send no lines).
    A whole sale without customer_id earns for the profile its card is linked
    to, or is recorded unclaimed with a claim code (``claim_api``)."""
    program = _program(request)

    def build(body: dict[str, Any], terminal_id: str, now: int) -> Action:
        sale = None
        if "sale" in body:
            check_fields(body, {"sale"}, {"customer_id"})
            sale = parse_sale(get_object(body, "sale"))
            if not sale.fully_paid:
                raise Unprocessable("only a fully paid sale earns", code="sale_not_paid", field="sale.state")
            if sale.total <= 0:
                raise Unprocessable("a sale of nothing earns nothing", code="empty_sale", field="sale")
            if "customer_id" not in body:
                return claim_api.earn_without_profile(request, program, sale, terminal_id, now)
            sale_id, amount = sale.sale_id, sale.total
        else:
            check_fields(body, {"customer_id", "sale_id", "amount", "state"})
            state = get_str(body, "state", 16)
            if state not in ("paid", "closed", "open"):
                raise InvalidInput("state must be paid, closed or open", code="invalid_value", field="state")
            if state == "open":
                raise Unprocessable("only a fully paid sale earns", code="sale_not_paid", field="state")
            amount = get_int(body, "amount", 1, MAX_AMOUNT)
            sale_id = str(get_str(body, "sale_id", 64))
        who, rating = request.app[STORE].live_rating(customer_id(body.get("customer_id")))
        if sale is not None:
            points = compute_earn(sale, earning_rules(program), rating, now).total
        else:
            points = amount_earn(amount, program, rating)
        op = Earn(
            op_id=uuid7(now),
            at=now,
            terminal_id=terminal_id,
            customer_id=who,
            sale_id=sale_id,
            amount=amount,
            points=points,
            program_version=program.version,
            sale=sale,
        )
        return sale_writes.earn(op, rating)

    return await write(request, build)


async def quote(request: web.Request) -> web.Response:
    """What a sale would earn, and what the customer may spend on it. Stores nothing."""
    program = _program(request)
    body = await read_json(request)
    check_fields(body, {"sale"}, {"customer_id"})
    sale = parse_sale(get_object(body, "sale"))
    now = now_ms(request)
    profile = None
    rating = RulesCustomer()
    if body.get("customer_id") is not None:
        who = live_customer_id(request, body["customer_id"])
        profile = request.app[STORE].customer(who, now)
        rating = request.app[STORE].rating(who)
    breakdown = compute_earn(sale, earning_rules(program), rating, now)
    answer: dict[str, Any] = {
        "sale_id": sale.sale_id,
        "program_version": program.version,
        "points": breakdown.total,
        "reason": breakdown.reason,
        "breakdown": {
            "eligible_amount": breakdown.eligible_amount,
            "ratio_points": breakdown.ratio_points,
            "custom_points": breakdown.custom_points,
            "item_points": breakdown.item_points,
            "visit_points": breakdown.visit_points,
            "bonus_points": breakdown.bonus_points,
        },
        "program_kind": program.options.kind.value,
        "available": None,
        "expiring_soon": None,
        "rewards": [],
        "max_loyalty_tender": None,
    }
    if profile is not None:
        available = profile["balance"]["available"]
        answer["available"] = available
        answer["expiring_soon"] = profile["expiring_soon"]
        if program.options.kind is ProgramKind.CURRENCY:
            answer["max_loyalty_tender"] = max_loyalty_tender(sale, available)
        else:
            answer["rewards"] = [
                {"reward_id": r.reward_id, "name": r.name, "points": r.points, "kind": r.kind.value,
                 "amount": r.amount, "percent": r.percent, "sku": r.sku}
                for r in rewards_within(program.options.rewards, available)
            ]
    return web.json_response(answer)


def _rewards(body: dict[str, Any], program: Program) -> tuple[tuple[str, int], ...]:
    if program.options.kind is not ProgramKind.POINTS:
        raise Unprocessable("a currency program has no rewards: redeem an amount", code="wrong_program_kind",
                            field="rewards")
    catalog = {r.reward_id for r in program.options.rewards}
    chosen: list[tuple[str, int]] = []
    for index, raw in enumerate(_objects(body, "rewards", MAX_REWARD_LINES)):
        where = f"rewards[{index}]"
        try:
            check_fields(raw, {"reward_id", "count"})
            reward_id = str(get_str(raw, "reward_id", 64))
            count = get_int(raw, "count", 1, 100)
        except InvalidInput as exc:
            raise InvalidInput(exc.message, code=exc.code, field=f"{where}.{exc.field}") from exc
        if reward_id not in catalog:
            raise Unprocessable(f"no reward {reward_id!r} in this program", code="unknown_reward",
                                field=f"{where}.reward_id")
        if any(reward_id == seen for seen, _ in chosen):
            raise InvalidInput("a reward is named twice: give it a count", code="invalid_value",
                               field=f"{where}.reward_id")
        chosen.append((reward_id, count))
    return tuple(chosen)


async def redeem(request: web.Request) -> web.Response:
    """Points programs: ``rewards`` from the catalog (several, or one several
    times); currency programs: ``amount``, a loyalty tender in loyalty minor
    units; either: ``points``, a debit the terminal priced itself."""
    program = _program(request)

    def build(body: dict[str, Any], terminal_id: str, now: int) -> Action:
        forms = {"points", "rewards", "amount"}
        check_fields(body, {"customer_id", "sale_id"}, forms)
        given = sorted(forms & set(body))
        if len(given) != 1:
            raise InvalidInput("redeem exactly one of rewards, amount or points", code="missing",
                               field=given[1] if len(given) > 1 else "rewards")
        (form,) = given
        sale_id = str(get_str(body, "sale_id", 64))
        rewards: tuple[tuple[str, int], ...] = ()
        if form == "rewards":
            rewards = _rewards(body, program)
            points = reward_cost(program.options.rewards, dict(rewards), MAX_POINTS)
        elif form == "amount":
            if program.options.kind is not ProgramKind.CURRENCY:
                raise Unprocessable("a points program redeems rewards, not an amount", code="wrong_program_kind",
                                    field="amount")
            points = get_int(body, "amount", 1, MAX_POINTS)
        else:
            points = get_int(body, "points", 1, MAX_POINTS)
        op = Redeem(
            op_id=uuid7(now),
            at=now,
            terminal_id=terminal_id,
            customer_id=live_customer_id(request, body.get("customer_id")),
            sale_id=sale_id,
            points=points,
            program_version=program.version,
            rewards=rewards,
        )
        return sale_writes.redeem(op, form)

    return await write(request, build)


def _policy(request: web.Request) -> tuple[RefundPolicy, int | None]:
    """The refund policy of this node's program and its version (the default before one arrives)."""
    program = request.app[STORE].program()
    if program is None:
        return RefundPolicy.CLAMP, None
    return program.options.refund_policy, program.version


async def void_sale(request: web.Request) -> web.Response:
    sale_id = _sale_id(request)
    policy, version = _policy(request)

    def build(body: dict[str, Any], terminal_id: str, now: int) -> Action:
        check_fields(body, set())

        def make(customer: str, reversed_points: int, returned_points: int) -> Void:
            return Void(
                op_id=uuid7(now), at=now, terminal_id=terminal_id, customer_id=customer, sale_id=sale_id,
                reversed_points=reversed_points, returned_points=returned_points, program_version=version,
            )

        return sale_writes.void(sale_id, make, policy, now)

    return await write(request, build, allow_empty=True)


def _lines(body: dict[str, Any]) -> tuple[tuple[str, int], ...]:
    lines = []
    for index, raw in enumerate(_objects(body, "lines", MAX_LINES)):
        try:
            check_fields(raw, {"line_id", "quantity"})
            lines.append((str(get_str(raw, "line_id", 64)), get_int(raw, "quantity", 1, MAX_QUANTITY)))
        except InvalidInput as exc:
            raise InvalidInput(exc.message, code=exc.code, field=f"lines[{index}].{exc.field}") from exc
    return tuple(lines)


async def refund_sale(request: web.Request) -> web.Response:
    """Return lines of a sale: its earning on them comes back off the balance,
    the redeemed share of them back on; nothing is returned twice."""
    sale_id = _sale_id(request)
    policy, version = _policy(request)

    def build(body: dict[str, Any], terminal_id: str, now: int) -> Action:
        check_fields(body, {"lines"})
        lines = _lines(body)

        def make(customer: str, reversed_points: int, returned_points: int) -> Refund:
            return Refund(
                op_id=uuid7(now), at=now, terminal_id=terminal_id, customer_id=customer, sale_id=sale_id,
                lines=lines, reversed_points=reversed_points, returned_points=returned_points,
                program_version=version,
            )

        return sale_writes.refund(sale_id, lines, make, policy, now)

    return await write(request, build)
