"""The yardstick: a bare aiohttp JSON handler, no auth, no database."""

from __future__ import annotations

import sys

from aiohttp import web


async def handler(request: web.Request) -> web.Response:
    return web.json_response({"customers": [{"customer_id": "x", "name": "bare", "balance": {"confirmed": 0}}]})


def main() -> None:
    app = web.Application()
    app.router.add_get("/bare", handler)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
