"""The admin API (``/v1/admin/...``): merchants and operators, JSON over HTTP.

Every route needs ``Authorization: Bearer <token>`` of an operator made by
``loyalty-cloud operator add``; the ledger keeps only the token's SHA-256.
An operator made with ``--brand`` sees and changes that brand only (a
merchant, an accountant); one without it is the cloud's operator. Errors
take the cloud's one JSON shape (``api.error_middleware``); JSON bodies are
bounded before they are read, unknown fields are errors.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from protocol.rules import Program

from .api import CLOCK, STORAGE, read_bounded
from .checks import check_id
from .erasure import ErasureRecord
from .errors import AlreadyExists, ConfigError, HttpError, NotFound, Refused
from .model import AdjustmentRecord, OperatorRecord
from .otp import contact_hashes
from .portal.config import PORTAL

PREFIX = "/v1/admin/"
MAX_JSON_BYTES = 64 * 1024
TOKEN_PREFIX = "lec_"
OPERATOR = web.RequestKey("operator", OperatorRecord)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def new_token() -> str:
    """A bearer token: 256 random bits, shown once to whoever made the operator."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@web.middleware
async def admin_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate every ``/v1/admin/`` request before its handler runs."""
    if request.path.startswith(PREFIX):
        request[OPERATOR] = await _operator(request)
    return await handler(request)


async def _operator(request: web.Request) -> OperatorRecord:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.startswith(TOKEN_PREFIX) or len(token) > 128:
        raise HttpError(401, "unauthorized", "send Authorization: Bearer <operator token>", field="Authorization")
    operator = await request.app[STORAGE].find_operator(hash_token(token.strip()))
    if operator is None or operator.revoked_at is not None:
        # One answer for unknown and revoked: a token's history is nobody's business.
        raise HttpError(401, "unauthorized", "this operator token is not valid", field="Authorization")
    return operator


def brand_of(request: web.Request) -> str:
    """The ``{brand_id}`` of the path, if this operator may act on it (403 otherwise)."""
    brand_id = request.match_info["brand_id"]
    try:
        check_id("brand_id", brand_id)
    except ConfigError as exc:
        raise HttpError(404, "unknown_brand", exc.message, field="brand_id") from exc
    allowed = request[OPERATOR].brand_id
    if allowed is not None and allowed != brand_id:
        raise HttpError(403, "forbidden_brand", f"this operator acts for brand {allowed!r} only", field="brand_id")
    return brand_id


def visible_brands(request: web.Request) -> str | None:
    """The brand an operator is limited to, or None for every brand."""
    return request[OPERATOR].brand_id


async def read_json(request: web.Request, limit: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """A JSON object body, refused (413) as soon as it is known to exceed ``limit``."""
    if request.content_type != "application/json":
        raise HttpError(415, "unsupported_media_type", "send Content-Type: application/json", field="content_type")
    data = await read_bounded(request, limit)
    try:
        body = json.loads(data, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise HttpError(400, "invalid_json", f"the body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise HttpError(400, "invalid_json", "the body must be a JSON object")
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def check_fields(body: dict[str, Any], required: set[str], optional: frozenset[str] = frozenset()) -> None:
    for key in body:
        if key not in required and key not in optional:
            raise HttpError(400, "unknown_field", f"unknown field {key!r}", field=key)
    for key in sorted(required - set(body)):
        raise HttpError(400, "missing", f"{key} is required", field=key)


def config_error(exc: ConfigError, status: int = 400) -> HttpError:
    """An operator-input error from the storage layer, as the API's error."""
    code = {404: "not_found", 409: "already_exists"}.get(status, exc.code or "invalid_value")
    return HttpError(status, code, exc.message, field=exc.field)


def program_json(program: Program) -> dict[str, Any]:
    return {
        "brand_id": program.brand_id,
        "version": program.version,
        "name": program.name,
        "points_per_unit": program.points_per_unit,
        "unit_amount": program.unit_amount,
        "settings": json.loads(program.settings),
    }


# ---- routes


async def list_brands(request: web.Request) -> web.Response:
    only = visible_brands(request)
    brands = [b for b in await request.app[STORAGE].list_brands() if only is None or b.brand_id == only]
    return web.json_response({"brands": [{"brand_id": b.brand_id, "name": b.name, "created_at": b.created_at}
                                         for b in brands]})


async def get_program(request: web.Request) -> web.Response:
    brand_id = brand_of(request)
    program = await request.app[STORAGE].current_program(brand_id)
    if program is None:
        raise HttpError(404, "no_program", f"brand {brand_id!r} has no program yet", field="brand_id")
    return web.json_response(program_json(program))


async def put_program(request: web.Request) -> web.Response:
    """A new version of the brand's program; the edges get it with their next pull."""
    brand_id = brand_of(request)
    body = await read_json(request)
    check_fields(body, {"name", "points_per_unit", "unit_amount"}, frozenset({"settings"}))
    for name in ("points_per_unit", "unit_amount"):
        if type(body[name]) is not int:
            raise HttpError(400, "invalid_type", f"{name} must be an integer", field=name)
    if not isinstance(body["name"], str):
        raise HttpError(400, "invalid_type", "name must be a string", field="name")
    settings = body.get("settings", {})
    if not isinstance(settings, dict):
        raise HttpError(400, "invalid_type", "settings must be an object", field="settings")
    try:
        program = await request.app[STORAGE].set_program(
            brand_id, body["name"], body["points_per_unit"], body["unit_amount"], request.app[CLOCK](),
            json.dumps(settings),
        )
    except ConfigError as exc:
        raise config_error(exc, 404 if exc.field == "brand_id" else 400) from exc
    return web.json_response(program_json(program), status=201)


def adjustment_json(record: AdjustmentRecord) -> dict[str, Any]:
    return {"op_id": record.op_id, "customer_id": record.customer_id, "points": record.points,
            "reason": record.reason, "actor": record.actor, "operator_id": record.operator_id,
            "balance": record.balance_after, "version": record.version, "at": record.at}


async def post_adjustment(request: web.Request) -> web.Response:
    """A manual adjustment with a reason; the actor is the operator unless the body names one.
    It reaches every edge of the brand with their next pull, like any balance change."""
    brand_id = brand_of(request)
    body = await read_json(request)
    check_fields(body, {"points", "reason"}, frozenset({"actor"}))
    if type(body["points"]) is not int:
        raise HttpError(400, "invalid_type", "points must be an integer", field="points")
    for name in ("reason", "actor"):
        if name in body and not isinstance(body[name], str):
            raise HttpError(400, "invalid_type", f"{name} must be a string", field=name)
    operator = request[OPERATOR]
    try:
        record = await request.app[STORAGE].adjust_balance(
            brand_id, request.match_info["customer_id"], body["points"], body["reason"],
            body.get("actor", operator.name), request.app[CLOCK](), operator_id=operator.operator_id,
        )
    except NotFound as exc:
        raise HttpError(404, "unknown_customer", exc.message, field=exc.field) from exc
    except Refused as exc:
        raise HttpError(422, exc.code or "refused", exc.message, field=exc.field) from exc
    except ConfigError as exc:
        raise config_error(exc) from exc
    return web.json_response(adjustment_json(record), status=201)


async def list_stores(request: web.Request) -> web.Response:
    only = visible_brands(request)
    stores = [s for s in await request.app[STORAGE].list_stores() if only is None or s.brand_id == only]
    return web.json_response({"stores": [
        {"store_id": s.store_id, "brand_id": s.brand_id, "last_seq": s.last_seq, "key_ids": list(s.key_ids),
         "created_at": s.created_at, "revoked_at": s.revoked_at, "revoke_reason": s.revoke_reason}
        for s in stores]})


def erasure_json(record: ErasureRecord) -> dict[str, Any]:
    return {"customer_id": record.customer_id, "brand_id": record.brand_id, "version": record.version,
            "actor": record.actor, "reason": record.reason, "operator_id": record.operator_id,
            "erased_at": record.at, "scrubbed": record.scrubbed}


async def post_erasure(request: web.Request) -> web.Response:
    """Erase the customer's personal data (``cloud.erasure``); the ledger keeps the amounts on the
    anonymous id and every edge of the brand scrubs its copy with its next pull."""
    brand_id = brand_of(request)
    body = await read_json(request)
    check_fields(body, {"reason"}, frozenset({"actor"}))
    for name in ("reason", "actor"):
        if name in body and not isinstance(body[name], str):
            raise HttpError(400, "invalid_type", f"{name} must be a string", field=name)
    operator = request[OPERATOR]
    storage = request.app[STORAGE]
    customer_id = request.match_info["customer_id"]
    hashes: list[str] = []
    portal = request.app.get(PORTAL)
    if portal is not None:  # the portal's sign-in codes and counters are filed under keyed hashes
        customer = await storage.get_customer(customer_id)
        if customer is not None and customer.brand_id == brand_id:
            hashes = contact_hashes(portal.keys, brand_id, customer.phone, customer.email)
    try:
        record = await storage.erase_customer(
            brand_id, customer_id, body.get("actor", operator.name), body["reason"], request.app[CLOCK](),
            operator_id=operator.operator_id, contact_hashes=hashes,
        )
    except NotFound as exc:
        raise HttpError(404, "unknown_customer", exc.message, field=exc.field) from exc
    except AlreadyExists as exc:
        raise HttpError(409, exc.code or "already_exists", exc.message, field=exc.field) from exc
    except ConfigError as exc:
        raise config_error(exc) from exc
    return web.json_response(erasure_json(record))


def add_routes(app: web.Application) -> None:
    app.router.add_get(PREFIX + "brands", list_brands)
    app.router.add_get(PREFIX + "brands/{brand_id}/program", get_program)
    app.router.add_put(PREFIX + "brands/{brand_id}/program", put_program)
    app.router.add_get(PREFIX + "stores", list_stores)
    app.router.add_post(PREFIX + "brands/{brand_id}/customers/{customer_id}/adjustments", post_adjustment)
    app.router.add_post(PREFIX + "brands/{brand_id}/customers/{customer_id}/erasure", post_erasure)
