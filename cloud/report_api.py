"""Reports over the admin API: ``GET /v1/admin/brands/{brand_id}/reports/{report}``.

Query: ``from`` and ``to`` (UTC dates, inclusive), ``period`` (day, week,
month) and ``format`` (``json``, the default, or ``csv``); anything else is
a 400 naming it. The operator's token and brand scope are checked by
``admin_api`` as for every admin route; ``reports`` defines the reports.
"""

from __future__ import annotations

from aiohttp import web

from .admin_api import PREFIX, brand_of, config_error
from .api import CLOCK, STORAGE
from .errors import ConfigError, HttpError, NotFound
from .reports import parse_query, run_report

FORMATS = ("json", "csv")


async def get_report(request: web.Request) -> web.Response:
    brand_id = brand_of(request)
    name = request.match_info["report"]
    params = dict(request.query)
    if len(params) != len(request.query):
        raise HttpError(400, "repeated_parameter", "each parameter may be given once")
    fmt = params.pop("format", "json")
    if fmt not in FORMATS:
        raise HttpError(400, "invalid_value", f"format must be one of {', '.join(FORMATS)}", field="format")
    try:
        query = parse_query(brand_id, params, request.app[CLOCK]())
        report = await run_report(request.app[STORAGE], name, query)
    except NotFound as exc:
        raise HttpError(404, "unknown_report" if exc.field == "report" else "unknown_brand", exc.message,
                        field=exc.field) from exc
    except ConfigError as exc:
        raise config_error(exc) from exc
    if fmt == "csv":
        filename = f"{brand_id}-{name}-{query.first_day}-{query.last_day}.csv"
        return web.Response(text=report.to_csv(), content_type="text/csv", charset="utf-8",
                            headers={"Content-Disposition": f'attachment; filename="{filename}"'})
    return web.json_response(report.to_json())


def add_routes(app: web.Application) -> None:
    app.router.add_get(PREFIX + "brands/{brand_id}/reports/{report}", get_report)
