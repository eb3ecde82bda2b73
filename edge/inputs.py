"""Strict parsing of terminal JSON: bounded size, known fields, exact types.

Nothing here trusts the client: the body is refused before reading when it
is too large, unknown fields are errors (a typo must not be silently
ignored), and booleans are not integers.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .errors import EdgeError, InvalidInput

MAX_BODY = 16 * 1024


async def read_json(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    length = request.content_length
    if length is not None and length > MAX_BODY:
        raise EdgeError(f"the body is larger than {MAX_BODY} bytes", code="too_large", status=413)
    if not request.can_read_body:
        if allow_empty:
            return {}
        raise InvalidInput("a JSON body is required", code="invalid_json")
    if request.content_type != "application/json":
        raise EdgeError("send Content-Type: application/json", code="unsupported_media_type", status=415)
    chunks: list[bytes] = []
    size = 0
    # Read to the end (a body may arrive in several segments), refusing as
    # soon as it passes the bound: chunked bodies have no Content-Length.
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > MAX_BODY:
            raise EdgeError(f"the body is larger than {MAX_BODY} bytes", code="too_large", status=413)
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object", code="invalid_json")
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def check_fields(body: dict[str, Any], required: set[str], optional: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    for key in body:
        if key not in required and key not in optional:
            raise InvalidInput(f"unknown field {key!r}", code="unknown_field", field=key)
    for key in sorted(required):
        if key not in body:
            raise InvalidInput(f"{key} is required", code="missing", field=key)


def get_int(body: dict[str, Any], name: str, low: int, high: int) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInput(f"{name} must be an integer", code="invalid_type", field=name)
    if not low <= value <= high:
        raise InvalidInput(f"{name} must be between {low} and {high}", code="out_of_range", field=name)
    return value


def get_str(body: dict[str, Any], name: str, max_len: int, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string", code="invalid_type", field=name)
    if not value.strip():
        raise InvalidInput(f"{name} must not be empty", code="missing", field=name)
    if len(value) > max_len:
        raise InvalidInput(f"{name} is longer than {max_len} characters", code="too_long", field=name)
    return value


def get_bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if not isinstance(value, bool):
        raise InvalidInput(f"{name} must be true or false", code="invalid_type", field=name)
    return value


def get_object(body: dict[str, Any], name: str) -> dict[str, Any]:
    value = body.get(name)
    if not isinstance(value, dict):
        raise InvalidInput(f"{name} must be an object", code="invalid_type", field=name)
    return value


def get_str_list(body: dict[str, Any], name: str, allowed: set[str]) -> tuple[str, ...]:
    value = body.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(f"{name} must be a list of strings", code="invalid_type", field=name)
    for item in value:
        if item not in allowed:
            raise InvalidInput(f"{name} may hold only {sorted(allowed)}", code="invalid_value", field=name)
    if len(set(value)) != len(value):
        raise InvalidInput(f"{name} repeats a value", code="invalid_value", field=name)
    return tuple(value)
