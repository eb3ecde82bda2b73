"""HTTP routes of enrollment and key rotation.

| route | body | answer |
| --- | --- | --- |
| ``POST /v1/claim`` | CLAIM envelope (self-signed) | ENROLLMENT envelope |
| ``POST /v1/store-keys`` | STORE_KEY envelope (old key) | STORE_KEY_ACK envelope |
| ``GET /v1/cloud-keys?after=KEY_ID`` | none | msgpack array of CLOUD_KEY envelopes |

The cloud key chain is public: each link is signed by the key before it,
which is what an edge checks. Errors take the one JSON shape (``api``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from protocol import MessageType
from protocol.envelope import MAX_ENVELOPE_BYTES, MAX_KEY_ID_LEN

from .api import CLOCK, CLOUD_KEY, SERVICE, STORAGE, msgpack_response, read_body
from .cloud_keyring import register_serving_key
from .errors import HttpError
from .store_keys import EnrollmentService

log = logging.getLogger(__name__)

ENROLLMENT = web.AppKey("enrollment", EnrollmentService)


async def post_claim(request: web.Request) -> web.Response:
    data = await read_body(request, MAX_ENVELOPE_BYTES[MessageType.CLAIM])
    return msgpack_response(await request.app[ENROLLMENT].claim(data))


async def post_store_key(request: web.Request) -> web.Response:
    data = await read_body(request, MAX_ENVELOPE_BYTES[MessageType.STORE_KEY])
    return msgpack_response(await request.app[ENROLLMENT].rotate_store_key(data))


async def get_cloud_keys(request: web.Request) -> web.Response:
    unknown = set(request.query) - {"after"}
    if unknown:
        raise HttpError(400, "unknown_field", f"unknown parameter {sorted(unknown)[0]!r}", field=sorted(unknown)[0])
    after = request.query.get("after")
    if after is not None and not 0 < len(after) <= MAX_KEY_ID_LEN:
        raise HttpError(400, "bad_key_id", "after must name a key id", field="after")
    return msgpack_response(await request.app[ENROLLMENT].key_chain_after(after))


async def _enrollment_ctx(app: web.Application) -> AsyncIterator[None]:
    """Once the ledger is open: the serving key's version (refusing a key the ledger does not know)."""
    version = await register_serving_key(app[STORAGE], app[CLOUD_KEY], app[CLOCK]())
    log.info("signing with cloud key %s (version %d)", app[CLOUD_KEY].key_id, version)
    app[ENROLLMENT] = EnrollmentService(app[SERVICE])
    yield


def add_routes(app: web.Application) -> None:
    """Call after the storage and service contexts are in ``app.cleanup_ctx``."""
    app.cleanup_ctx.append(_enrollment_ctx)
    app.router.add_post("/v1/claim", post_claim)
    app.router.add_post("/v1/store-keys", post_store_key)
    app.router.add_get("/v1/cloud-keys", get_cloud_keys)
