"""The edge's own errors. Lower layers' exceptions are translated into these
at the boundary (``raise ... from``), and the HTTP layer turns them into the
one JSON error shape."""

from __future__ import annotations

from typing import Any


class EdgeError(Exception):
    """An error with an HTTP status, a stable code, a message and maybe a field."""

    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        status: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.field = field
        self.extra = extra or {}

    def to_json(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "field": self.field, **self.extra}}


class InvalidInput(EdgeError):
    status = 400
    code = "invalid_input"


class Unauthorized(EdgeError):
    status = 401
    code = "unauthorized"


class Forbidden(EdgeError):
    status = 403
    code = "forbidden"


class NotFound(EdgeError):
    status = 404
    code = "not_found"


class Conflict(EdgeError):
    status = 409
    code = "conflict"


class Unprocessable(EdgeError):
    """Well-formed but refused by a business rule (e.g. not enough points)."""

    status = 422
    code = "refused"


class TooManyRequests(EdgeError):
    status = 429
    code = "rate_limited"


class StoreError(EdgeError):
    """The local database failed (disk full, I/O error): nothing was stored."""

    status = 503
    code = "store_unavailable"


class CloudUnavailable(Exception):
    """The cloud could not be reached or answered with a server error."""


class CloudRefused(Exception):
    """The cloud answered with a 4xx: our request is wrong or out of sequence."""

    def __init__(self, status: int, code: str, message: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra or {}


class CloudPending(Exception):
    """The cloud stored the batch but has not applied it yet (202): send the same bytes
    again after ``retry_after`` seconds. Not a failure: it does not back off."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after
