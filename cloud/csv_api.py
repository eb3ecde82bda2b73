"""Merchant CSV files over the admin API (operator tokens and brand scope as ``admin_api``).

``POST /v1/admin/brands/{brand}/csv/{import-balances|opt-out|adjust}`` takes
the file as the body (``Content-Type: text/csv``, at most ``csv_rows.MAX_BYTES``,
refused with 413 before parsing) and ``?actor=`` (default: the operator's
name), ``reason=`` and ``region=``; it answers 201 with what the file did.
Bad rows are a 422 ``invalid_rows`` whose error carries ``rows`` (line,
field, code, message; the first ``MAX_ERRORS``) and ``total``; the same rows
applied twice a 409 ``file_already_applied``; in both cases nothing changed.
``GET /v1/admin/brands/{brand}/csv/export[?contacts=true]`` answers the CSV.
"""

from __future__ import annotations

import dataclasses

from aiohttp import web

from .admin_api import OPERATOR, PREFIX, brand_of, config_error
from .api import CLOCK, STORAGE, read_bounded
from .csv_rows import MAX_BYTES, CsvRejected, Kind, export_text, parse
from .errors import ConfigError, HttpError, NotFound, Refused

_KINDS = {"import-balances": Kind.IMPORT, "opt-out": Kind.OPT_OUT, "adjust": Kind.ADJUST}
_QUERY = frozenset({"actor", "reason", "region"})


def _query(request: web.Request, allowed: frozenset[str]) -> dict[str, str]:
    params = dict(request.query)
    if len(params) != len(request.query):
        raise HttpError(400, "repeated_parameter", "each parameter may be given once")
    for name in params:
        if name not in allowed:
            raise HttpError(400, "unknown_parameter", f"unknown parameter {name!r}", field=name)
    return params


async def post_csv(request: web.Request) -> web.Response:
    brand_id = brand_of(request)
    kind = _KINDS.get(request.match_info["action"])
    if kind is None:
        raise HttpError(404, "not_found", f"no CSV action {request.match_info['action']!r}", field="action")
    params = _query(request, _QUERY if kind is not Kind.OPT_OUT else _QUERY - {"reason"})
    if request.content_type != "text/csv":
        raise HttpError(415, "unsupported_media_type", "send Content-Type: text/csv", field="content_type")
    body = await read_bounded(request, MAX_BYTES)
    operator = request[OPERATOR]
    reason = params.get("reason")
    try:
        parsed = parse(kind, body, region=params.get("region"),
                       default_reason=reason if kind is Kind.ADJUST else None)
        result = await request.app[STORAGE].apply_csv(
            brand_id, parsed, params.get("actor", operator.name), request.app[CLOCK](),
            operator_id=operator.operator_id, reason=reason)
    except CsvRejected as exc:
        raise HttpError(422, "invalid_rows", exc.message, field="file",
                        extra={"rows": [e.to_json() for e in exc.errors], "total": exc.total}) from exc
    except NotFound as exc:
        raise HttpError(404, "unknown_brand", exc.message, field=exc.field) from exc
    except Refused as exc:
        raise HttpError(409, exc.code or "refused", exc.message, field=exc.field) from exc
    except ConfigError as exc:
        raise config_error(exc, 413 if exc.code == "too_large" else 400) from exc
    return web.json_response(dataclasses.asdict(result), status=201)


async def get_export(request: web.Request) -> web.Response:
    brand_id = brand_of(request)
    params = _query(request, frozenset({"contacts"}))
    contacts = params.get("contacts", "false")
    if contacts not in ("true", "false"):
        raise HttpError(400, "invalid_value", "contacts must be true or false", field="contacts")
    try:
        rows = await request.app[STORAGE].export_balances(brand_id)
    except NotFound as exc:
        raise HttpError(404, "unknown_brand", exc.message, field=exc.field) from exc
    return web.Response(text=export_text(rows, contacts == "true"), content_type="text/csv", charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{brand_id}-balances.csv"',
                                 "Cache-Control": "no-store"})


def add_routes(app: web.Application) -> None:
    app.router.add_get(PREFIX + "brands/{brand_id}/csv/export", get_export)
    app.router.add_post(PREFIX + "brands/{brand_id}/csv/{action}", post_csv)
