"""What every terminal route shares: the clock, idempotent writes, ids."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from protocol import is_uuid

from . import writes
from .appkeys import CLOCK, STORE, SYNC, TERMINAL_ID
from .errors import InvalidInput, NotFound
from .inputs import read_json


def now_ms(request: web.Request) -> int:
    """The node's clock (the app's CLOCK, which tests control), in ms."""
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


async def write(
    request: web.Request,
    build: Callable[[dict[str, Any], str, int], writes.Action],
    *,
    allow_empty: bool = False,
) -> web.Response:
    terminal_id: str = request[TERMINAL_ID]
    key = _idempotency_key(request)
    body = await read_json(request, allow_empty=allow_empty)
    now = now_ms(request)
    digest = hashlib.sha256(
        f"{request.method} {request.path}\n".encode() + json.dumps(body, sort_keys=True).encode()
    ).digest()
    action = build(body, terminal_id, now)
    status, data, replayed = await request.app[STORE].write(writes.idempotent(terminal_id, key, digest, now, action))
    if not replayed:
        request.app[SYNC].notify()
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    return web.Response(status=status, body=data, content_type="application/json", headers=headers)


def customer_id(value: object) -> str:
    """A customer id from a path or a body; any malformed one is simply not found."""
    if not isinstance(value, str) or not is_uuid(value):
        raise NotFound("no customer with this id", code="unknown_customer", field="customer_id")
    return value


def live_customer_id(request: web.Request, value: object) -> str:
    """A customer id from a path or a body, as the survivor's when the cloud merged it into
    another profile (a duplicate card code or phone): ops then name the profile that holds the points."""
    return request.app[STORE].resolve(customer_id(value))
