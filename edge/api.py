"""The terminal HTTP API: routes, error shape and authentication.

Every error, whatever raised it, leaves as ``{"error": {"code", "message",
"field"}}`` with a 4xx status (5xx only when the node itself is failing).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from protocol import (
    Adjust,
    Consent,
    Earn,
    Enroll,
    Program,
    ProtocolError,
    Redeem,
    UpdateProfile,
    Void,
    earn_points,
    is_uuid,
    uuid7,
)
from protocol import normalize as norm
from protocol.earning import Customer as RulesCustomer
from protocol.earning import EarnBreakdown, compute_earn
from protocol.rewards import ProgramKind, max_loyalty_tender, rewards_within
from protocol.rules import earning_rules
from protocol.sale import Sale
from protocol.validate import MAX_AMOUNT, MAX_POINTS

from . import writes
from .appkeys import AUTH, CLOCK, CONFIG, STORE, SYNC, TERMINAL_ID
from .errors import EdgeError, InvalidInput, NotFound, StoreError, Unprocessable
from .inputs import check_fields, get_bool, get_int, get_object, get_str, get_str_list, read_json
from .openapi import document
from .sale_input import parse_sale
from .status_page import gated_metrics, snapshot, status_page
from .terminals import redeem_pairing_code

log = logging.getLogger(__name__)
PUBLIC_PATHS = frozenset({"/healthz", "/openapi.json", "/v1/pair", "/status", "/metrics"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(error: EdgeError) -> web.Response:
    return web.json_response(error.to_json(), status=error.status)


@web.middleware
async def terminal_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate the terminal, and turn every error into the one JSON shape.

    One middleware rather than two: each layer costs a coroutine frame on
    every request, and lookups are the hot path.
    """
    try:
        if request.path not in PUBLIC_PATHS:
            request[TERMINAL_ID] = request.app[AUTH].authenticate(
                request.headers.get("Authorization"), int(request.app[CLOCK]() * 1000)
            )
        return await handler(request)
    except EdgeError as exc:
        return error_response(exc)
    except ProtocolError as exc:
        return error_response(EdgeError(exc.message, code=exc.code, field=exc.field, status=exc.status_hint))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "http_error")
        return error_response(EdgeError(exc.reason, code=code, status=exc.status))


def _now_ms(request: web.Request) -> int:
    return int(request.app[CLOCK]() * 1000)


def _idempotency_key(request: web.Request) -> str:
    key = request.headers.get("Idempotency-Key")
    if not key or len(key) > 128 or not key.isprintable():
        raise InvalidInput(
            "every write needs an Idempotency-Key header of 1 to 128 printable characters",
            code="idempotency_key_required",
            field="Idempotency-Key",
        )
    return key


async def _write(
    request: web.Request,
    build: Callable[[dict[str, Any], str, int], writes.Action],
    *,
    allow_empty: bool = False,
) -> web.Response:
    terminal_id: str = request[TERMINAL_ID]
    key = _idempotency_key(request)
    body = await read_json(request, allow_empty=allow_empty)
    now = _now_ms(request)
    digest = hashlib.sha256(
        f"{request.method} {request.path}\n".encode() + json.dumps(body, sort_keys=True).encode()
    ).digest()
    action = build(body, terminal_id, now)
    status, data, replayed = await request.app[STORE].write(writes.idempotent(terminal_id, key, digest, now, action))
    if not replayed:
        request.app[SYNC].notify()
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    return web.Response(status=status, body=data, content_type="application/json", headers=headers)


# ------------------------------------------------------------------ reads


async def healthz(request: web.Request) -> web.Response:
    snap = snapshot(request.app)
    return web.json_response(
        {"status": snap["verdict"]["status"], "reasons": snap["verdict"]["reasons"], "outbox": snap["outbox"],
         "sync": snap["sync"], "version": snap["software_version"]}
    )


async def find_customers(request: web.Request) -> web.Response:
    query = dict(request.query)
    limit = 10
    if "limit" in query:
        raw = query.pop("limit")
        if not raw.isdigit() or not 1 <= int(raw) <= 50:
            raise InvalidInput("limit must be 1 to 50", code="out_of_range", field="limit")
        limit = int(raw)
    keys = set(query) & {"phone", "email", "code", "name"}
    unknown = set(query) - keys
    if unknown:
        raise InvalidInput(f"unknown parameter {sorted(unknown)[0]!r}", code="unknown_field", field=sorted(unknown)[0])
    if len(keys) != 1:
        raise InvalidInput("search by exactly one of phone, email, code or name", code="missing", field="phone")
    (by,) = keys
    value = query[by]
    if len(value) > 254:
        raise InvalidInput(f"{by} is too long", code="too_long", field=by)
    if by == "phone":
        normalised = norm.phone(value, request.app[CONFIG].default_region)
    else:
        normalised = {"email": norm.email, "code": norm.card_code, "name": norm.name_key}[by](value)
    if not normalised:
        raise InvalidInput(f"{by} must not be empty", code="missing", field=by)
    customers = request.app[STORE].find(by, normalised, limit)
    return web.json_response({"customers": customers})


async def get_customer(request: web.Request) -> web.Response:
    return web.json_response(request.app[STORE].customer(_customer_id(request.match_info["customer_id"])))


def _customer_id(value: object) -> str:
    if not isinstance(value, str) or not is_uuid(value):
        raise NotFound("no customer with this id", code="unknown_customer", field="customer_id")
    return value


async def list_conflicts(request: web.Request) -> web.Response:
    return web.json_response({"conflicts": request.app[STORE].conflicts()})


# ----------------------------------------------------------------- writes


async def pair(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    auth.check_pairing_rate()
    body = await read_json(request)
    check_fields(body, {"code", "name"})
    code = get_str(body, "code", 32)
    name = get_str(body, "name", 100)
    assert code is not None and name is not None
    try:
        result = await request.app[STORE].write(redeem_pairing_code(code, name, _now_ms(request)))
    except EdgeError:
        auth.pairing_failed()
        raise
    log.info("terminal %s paired", result["terminal_id"])
    return web.json_response(result, status=201)


def _contact(body: dict[str, Any], region: str) -> dict[str, str | None]:
    phone = get_str(body, "phone", 32, required=False)
    email = get_str(body, "email", 254, required=False)
    card = get_str(body, "card_code", 64, required=False)
    return {
        "phone": None if phone is None else norm.phone(phone, region),
        "email": None if email is None else norm.email(email),
        "card_code": None if card is None else norm.card_code(card),
    }


def _build_enroll(body: dict[str, Any], terminal_id: str, now: int, region: str) -> writes.Action:
    check_fields(body, {"name", "consent"}, {"phone", "email", "card_code"})
    consent = get_object(body, "consent")
    check_fields(consent, {"terms_accepted"}, {"channels", "staff"})
    name = get_str(body, "name", 200)
    assert name is not None
    op = Enroll(
        op_id=uuid7(now),
        at=now,
        terminal_id=terminal_id,
        customer_id=uuid7(now),
        name=name.strip(),
        consent=Consent(
            terms_accepted=get_bool(consent, "terms_accepted"),
            channels=get_str_list(consent, "channels", {"phone", "email"}),
            source="pos",
            staff=get_str(consent, "staff", 100, required=False),
            at=now,
        ),
        **_contact(body, region),
    )
    return writes.enroll(op)


async def enroll(request: web.Request) -> web.Response:
    return await _write(request, functools.partial(_build_enroll, region=request.app[CONFIG].default_region))


async def update_customer(request: web.Request) -> web.Response:
    customer_id = _customer_id(request.match_info["customer_id"])

    def build(body: dict[str, Any], terminal_id: str, now: int) -> writes.Action:
        check_fields(body, set(), {"name", "phone", "email", "card_code"})
        if body.get("name", "") is None:
            raise InvalidInput("name cannot be removed", code="invalid_value", field="name")
        clear = tuple(f for f in ("phone", "email", "card_code") if f in body and body[f] is None)
        name = get_str(body, "name", 200, required=False)
        op = UpdateProfile(
            op_id=uuid7(now),
            at=now,
            terminal_id=terminal_id,
            customer_id=customer_id,
            name=None if name is None else name.strip(),
            clear=clear,
            **_contact(body, request.app[CONFIG].default_region),
        )
        return writes.update_profile(op)

    return await _write(request, build)


def _program(request: web.Request) -> Program:
    program = request.app[STORE].program()
    if program is None:
        raise StoreError("the loyalty program has not been received from the cloud yet", code="no_program")
    return program


def _sale_earning(sale: Sale, program: Program, now: int) -> EarnBreakdown:
    return compute_earn(sale, earning_rules(program), RulesCustomer(), now)


async def earn(request: web.Request) -> web.Response:
    """Either a whole sale (lines, discounts, tenders: the rules decide), or a
    paid amount (the program's ratio only, for terminals that send no lines)."""
    program = _program(request)

    def build(body: dict[str, Any], terminal_id: str, now: int) -> writes.Action:
        if "sale" in body:
            check_fields(body, {"customer_id", "sale"})
            sale = parse_sale(get_object(body, "sale"))
            breakdown = _sale_earning(sale, program, now)
            if breakdown.reason == "not_paid":
                raise Unprocessable("only a fully paid sale earns", code="sale_not_paid", field="sale.state")
            if sale.total <= 0:
                raise Unprocessable("a sale of nothing earns nothing", code="empty_sale", field="sale")
            sale_id, amount, points = sale.sale_id, sale.total, breakdown.total
        else:
            check_fields(body, {"customer_id", "sale_id", "amount", "state"})
            state = get_str(body, "state", 16)
            if state not in ("paid", "closed", "open"):
                raise InvalidInput("state must be paid, closed or open", code="invalid_value", field="state")
            if state == "open":
                raise Unprocessable("only a fully paid sale earns", code="sale_not_paid", field="state")
            amount = get_int(body, "amount", 1, MAX_AMOUNT)
            sale_id = str(get_str(body, "sale_id", 64))
            points = earn_points(amount, program)
        op = Earn(
            op_id=uuid7(now),
            at=now,
            terminal_id=terminal_id,
            customer_id=_customer_id(body.get("customer_id")),
            sale_id=sale_id,
            amount=amount,
            points=points,
            program_version=program.version,
        )
        return writes.earn(op)

    return await _write(request, build)


async def quote(request: web.Request) -> web.Response:
    """What a sale would earn, and what the customer may spend on it. Stores nothing."""
    program = _program(request)
    body = await read_json(request)
    check_fields(body, {"sale"}, {"customer_id"})
    sale = parse_sale(get_object(body, "sale"))
    breakdown = _sale_earning(sale, program, _now_ms(request))
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
        "rewards": [],
        "max_loyalty_tender": None,
    }
    if body.get("customer_id") is not None:
        available = request.app[STORE].customer(_customer_id(body["customer_id"]))["balance"]["available"]
        answer["available"] = available
        if program.options.kind is ProgramKind.CURRENCY:
            answer["max_loyalty_tender"] = max_loyalty_tender(sale, available)
        else:
            answer["rewards"] = [
                {"reward_id": r.reward_id, "name": r.name, "points": r.points, "kind": r.kind.value,
                 "amount": r.amount, "percent": r.percent, "sku": r.sku}
                for r in rewards_within(program.options.rewards, available)
            ]
    return web.json_response(answer)


async def redeem(request: web.Request) -> web.Response:
    version = _program(request).version

    def build(body: dict[str, Any], terminal_id: str, now: int) -> writes.Action:
        check_fields(body, {"customer_id", "sale_id", "points"})
        sale_id = get_str(body, "sale_id", 64)
        assert sale_id is not None
        op = Redeem(
            op_id=uuid7(now),
            at=now,
            terminal_id=terminal_id,
            customer_id=_customer_id(body.get("customer_id")),
            sale_id=sale_id,
            points=get_int(body, "points", 1, MAX_POINTS),
            program_version=version,
        )
        return writes.redeem(op)

    return await _write(request, build)


async def void_sale(request: web.Request) -> web.Response:
    sale_id = request.match_info["sale_id"]
    if not sale_id or len(sale_id) > 64:
        raise NotFound("no loyalty activity for this sale", code="unknown_sale", field="sale_id")

    def build(body: dict[str, Any], terminal_id: str, now: int) -> writes.Action:
        check_fields(body, set())

        def make(customer_id: str, reversed_points: int, returned_points: int) -> Void:
            return Void(
                op_id=uuid7(now), at=now, terminal_id=terminal_id, customer_id=customer_id, sale_id=sale_id,
                reversed_points=reversed_points, returned_points=returned_points,
            )

        return writes.void(sale_id, make)

    return await _write(request, build, allow_empty=True)


async def adjust(request: web.Request) -> web.Response:
    def build(body: dict[str, Any], terminal_id: str, now: int) -> writes.Action:
        check_fields(body, {"customer_id", "points", "reason", "actor"})
        reason = get_str(body, "reason", 500)
        actor = get_str(body, "actor", 100)
        assert reason is not None and actor is not None
        op = Adjust(
            op_id=uuid7(now),
            at=now,
            terminal_id=terminal_id,
            customer_id=_customer_id(body.get("customer_id")),
            points=get_int(body, "points", -MAX_POINTS, MAX_POINTS),
            reason=reason,
            actor=actor,
        )
        return writes.adjust(op)

    return await _write(request, build)


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/status", status_page)
    app.router.add_get("/metrics", gated_metrics)
    app.router.add_post("/v1/pair", pair)
    app.router.add_get("/v1/customers", find_customers)
    app.router.add_post("/v1/customers", enroll)
    app.router.add_get("/v1/customers/{customer_id}", get_customer)
    app.router.add_patch("/v1/customers/{customer_id}", update_customer)
    app.router.add_post("/v1/earns", earn)
    app.router.add_post("/v1/quote", quote)
    app.router.add_post("/v1/redemptions", redeem)
    app.router.add_post("/v1/sales/{sale_id}/void", void_sale)
    app.router.add_post("/v1/adjustments", adjust)
    app.router.add_get("/v1/conflicts", list_conflicts)

