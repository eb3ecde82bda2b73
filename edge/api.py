"""The terminal HTTP API: routes, error shape and authentication.

Every error, whatever raised it, leaves as ``{"error": {"code", "message",
"field"}}`` with a 4xx status (5xx only when the node itself is failing).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from protocol import (
    Adjust,
    Consent,
    Enroll,
    LocalProtocolError,
    ProtocolError,
    UpdateProfile,
    uuid7,
)
from protocol import normalize as norm
from protocol.earning import Customer as RulesCustomer
from protocol.earning import signup_bonus
from protocol.ops import MAX_GROUPS
from protocol.rules import earning_rules
from protocol.sale import Tender, TenderKind
from protocol.validate import MAX_POINTS

from . import claim_api, claim_writes, sale_api, writes
from .api_support import customer_id as _customer_id
from .api_support import live_customer_id, write
from .api_support import now_ms as _now_ms
from .appkeys import AUTH, CLOCK, CONFIG, STORE, TERMINAL_ID
from .errors import EdgeError, InvalidInput
from .inputs import check_fields, get_bool, get_int, get_object, get_str, get_str_list, read_json
from .openapi import document
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
    if "card_token" in query:
        return await _find_by_card(request, query, limit)
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
    customers = request.app[STORE].find(by, normalised, limit, _now_ms(request))
    return web.json_response({"customers": customers})


async def _find_by_card(request: web.Request, query: dict[str, str], limit: int) -> web.Response:
    """The profile a processor's card token is linked to (none or one)."""
    token = query.pop("card_token")
    if query:
        raise InvalidInput("search by card_token alone", code="unknown_field", field=sorted(query)[0])
    try:
        Tender(TenderKind.CARD, 1, token)  # the sale's own check: a card number is refused, never echoed
    except LocalProtocolError as exc:
        raise InvalidInput(exc.message, code=exc.code, field="card_token") from exc
    store = request.app[STORE]
    who = store.read(lambda c: claim_writes.linked_customer(c, token))
    found = [] if who is None or limit < 1 else [store.customer(who, _now_ms(request))]
    return web.json_response({"customers": found})


async def get_customer(request: web.Request) -> web.Response:
    customer_id = _customer_id(request.match_info["customer_id"])
    return web.json_response(request.app[STORE].customer(customer_id, _now_ms(request)))


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


def _groups(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("groups")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput("groups must be a list of strings", code="invalid_type", field="groups")
    if len(value) > MAX_GROUPS:
        raise InvalidInput(f"at most {MAX_GROUPS} groups", code="out_of_range", field="groups")
    return tuple(value)


def _build_enroll(body: dict[str, Any], terminal_id: str, now: int, region: str, app: web.Application) -> writes.Action:
    check_fields(body, {"name", "consent"}, {"phone", "email", "card_code", "groups", "opted_out"})
    consent = get_object(body, "consent")
    check_fields(consent, {"terms_accepted"}, {"channels", "staff"})
    name = get_str(body, "name", 200)
    assert name is not None
    groups = _groups(body) if "groups" in body else ()
    opted_out = get_bool(body, "opted_out") if "opted_out" in body else False
    # The one-time bonus of the program this node has: shown as pending until the cloud confirms it.
    program = app[STORE].program()
    bonus = 0 if program is None else signup_bonus(earning_rules(program), RulesCustomer(groups, opted_out))
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
        groups=groups,
        opted_out=opted_out,
        signup_bonus=bonus,
        program_version=None if program is None else program.version,
        **_contact(body, region),
    )
    return writes.enroll(op)


async def enroll(request: web.Request) -> web.Response:
    return await write(request, functools.partial(
        _build_enroll, region=request.app[CONFIG].default_region, app=request.app
    ))


async def update_customer(request: web.Request) -> web.Response:
    customer_id = live_customer_id(request, request.match_info["customer_id"])

    def build(body: dict[str, Any], terminal_id: str, now: int) -> writes.Action:
        check_fields(body, set(), {"name", "phone", "email", "card_code", "groups", "opted_out"})
        for field in ("name", "groups", "opted_out"):
            if field in body and body[field] is None:
                raise InvalidInput(f"{field} cannot be removed", code="invalid_value", field=field)
        clear = tuple(f for f in ("phone", "email", "card_code") if f in body and body[f] is None)
        name = get_str(body, "name", 200, required=False)
        op = UpdateProfile(
            op_id=uuid7(now),
            at=now,
            terminal_id=terminal_id,
            customer_id=customer_id,
            name=None if name is None else name.strip(),
            clear=clear,
            groups=_groups(body) if "groups" in body else None,
            opted_out=get_bool(body, "opted_out") if "opted_out" in body else None,
            **_contact(body, request.app[CONFIG].default_region),
        )
        return writes.update_profile(op)

    return await write(request, build)


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
            customer_id=live_customer_id(request, body.get("customer_id")),
            points=get_int(body, "points", -MAX_POINTS, MAX_POINTS),
            reason=reason,
            actor=actor,
        )
        return writes.adjust(op)

    return await write(request, build)


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
    app.router.add_post("/v1/earns", sale_api.earn)
    app.router.add_post("/v1/quote", sale_api.quote)
    app.router.add_post("/v1/redemptions", sale_api.redeem)
    app.router.add_post("/v1/sales/{sale_id}/void", sale_api.void_sale)
    app.router.add_post("/v1/sales/{sale_id}/refunds", sale_api.refund_sale)
    app.router.add_post("/v1/adjustments", adjust)
    app.router.add_get("/v1/conflicts", list_conflicts)
    app.router.add_post("/v1/claims", claim_api.claim)

