"""The cloud's own exceptions.

Storage drivers raise ``StoreError`` (translated from sqlite3/aiosqlite or
asyncpg with ``raise ... from``); request handling raises ``HttpError`` with
everything the HTTP boundary needs to answer in the one JSON error shape.
"""

from __future__ import annotations

from typing import Any


class CloudError(Exception):
    """Base class of everything the cloud package raises on purpose."""


class StoreError(CloudError):
    """The database failed or holds something this code cannot work with."""


class WriterBusy(StoreError):
    """SQLite's one writer stayed with another process past the busy timeout: nothing was done;
    try again (a reconciler's turn comes; a receive is answered 503 and resent)."""


class ConfigError(CloudError):
    """Bad operator input (CLI arguments, data directory, key file)."""

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.code = code  # the protocol's machine code when a protocol check refused the input


class KeyFileError(ConfigError):
    """The cloud key file is missing, malformed or readable by others."""


class NotFound(ConfigError):
    """A brand, store or key named by the operator does not exist."""


class AlreadyExists(ConfigError):
    """A brand, store or key named by the operator already exists."""


class Refused(ConfigError):
    """A well-formed operator request a business rule refuses (e.g. a debit above the balance)."""


class HttpError(CloudError):
    """A request refused with a status, a machine code and a human message.

    ``extra`` lands inside the ``error`` object next to code/message/field
    (e.g. ``{"expected": 8}`` for a sequence gap).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.extra = dict(extra or {})

    def to_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {**self.extra, "code": self.code, "message": self.message, "field": self.field}
        return {"error": error}

    def __repr__(self) -> str:
        return f"HttpError({self.status}, {self.code!r}, {self.message!r}, field={self.field!r})"


class NotYetApplied(HttpError):
    """202: the batch is stored in the inbox but not applied yet; send the same bytes again.

    Not a refusal: it takes the error shape because that is the one shape the
    edge reads, with ``retry_after_ms`` next to the code.
    """

    def __init__(self, store_id: str, seq: int, retry_after_ms: int) -> None:
        super().__init__(
            202,
            "accepted",
            f"batch {seq} of store {store_id} is accepted, not yet applied: send it again for its ack",
            extra={"retry_after_ms": retry_after_ms},
        )
