"""HTTP routes of the cloud, and the one JSON error shape every failure takes.

Every error is ``{"error": {"code", "message", "field", ...}}`` with a 4xx or
5xx status, whatever raised it: our HttpError, aiohttp's own HTTPException
(404, 405, ...), a storage failure (503) or a bug (500). Request bodies are
bounded before a byte is buffered: Content-Length first, then while reading.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from protocol import MessageType
from protocol.envelope import MAX_ENVELOPE_BYTES

from .errors import HttpError, StoreError
from .keys import CloudKey
from .service import SyncService
from .storage import Storage

log = logging.getLogger(__name__)

MSGPACK = "application/x-msgpack"
MAX_BATCH_BYTES = MAX_ENVELOPE_BYTES[MessageType.BATCH]
MAX_PULL_BYTES = MAX_ENVELOPE_BYTES[MessageType.PULL]

STORAGE = web.AppKey("storage", Storage)
SERVICE = web.AppKey("service", SyncService)
CLOUD_KEY = web.AppKey("cloud_key", CloudKey)
CLOCK = web.AppKey[Callable[[], int]]("clock")

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(exc: HttpError) -> web.Response:
    return web.json_response(exc.to_json(), status=exc.status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except HttpError as exc:
        if exc.status >= 500:
            log.error("%s %s: %r", request.method, request.path, exc)
        elif exc.status < 400:
            log.info("%s %s: %s %s", request.method, request.path, exc.code, exc.message)
        else:
            log.info("%s %s refused: %s %s", request.method, request.path, exc.code, exc.message)
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        return error_response(HttpError(exc.status, code, exc.reason))
    except StoreError:
        log.exception("%s %s: storage failed", request.method, request.path)
        return error_response(HttpError(503, "storage_unavailable", "the ledger database is unavailable"))
    except Exception:  # the boundary: a bug must still answer in the one error shape
        log.exception("%s %s failed", request.method, request.path)
        return error_response(HttpError(500, "internal_error", "internal error"))


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit``."""
    if request.content_type != MSGPACK:
        raise HttpError(
            415, "unsupported_media_type", f"send Content-Type: {MSGPACK}", field="content_type"
        )
    return await read_bounded(request, limit)


async def read_bounded(request: web.Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed ``limit``
    (Content-Length first, then while reading: chunked bodies have none)."""
    length = request.content_length
    if length is not None and length > limit:
        raise HttpError(413, "too_large", f"body of {length} bytes exceeds {limit}", extra={"limit": limit})
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise HttpError(413, "too_large", f"body exceeds {limit} bytes", extra={"limit": limit})
        chunks.append(chunk)
    return b"".join(chunks)


def msgpack_response(data: bytes) -> web.Response:
    return web.Response(body=data, content_type=MSGPACK)


async def healthz(request: web.Request) -> web.Response:
    await request.app[STORAGE].ping()
    now = request.app[CLOCK]()
    body: dict[str, Any] = {"status": "ok", "key_id": request.app[CLOUD_KEY].key_id, "time": now}
    return web.json_response(body)


async def public_key(request: web.Request) -> web.Response:
    key = request.app[CLOUD_KEY]
    return web.json_response({"key_id": key.key_id, "public_key": key.public_hex})


async def post_batch(request: web.Request) -> web.Response:
    data = await read_body(request, MAX_BATCH_BYTES)
    return msgpack_response(await request.app[SERVICE].submit_batch(data))


async def post_pull(request: web.Request) -> web.Response:
    data = await read_body(request, MAX_PULL_BYTES)
    return msgpack_response(await request.app[SERVICE].pull(data))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/public-key", public_key)
    app.router.add_post("/v1/batches", post_batch)
    app.router.add_post("/v1/pull", post_pull)
