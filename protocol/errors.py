"""The one family of errors that protocol code raises.

Modelled on h11: ``LocalProtocolError`` means *we* tried to build something
invalid (a bug or bad input from our own caller), ``RemoteProtocolError``
means a peer sent bytes we refuse. Both carry a status hint so that an HTTP
boundary can answer without guessing, and the field that was wrong when
there is one.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class: anything the protocol layer refuses."""

    def __init__(
        self,
        message: str,
        *,
        status_hint: int = 400,
        code: str = "protocol_error",
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_hint = status_hint
        self.code = code
        self.field = field

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status_hint={self.status_hint},"
            f" code={self.code!r}, field={self.field!r})"
        )


class LocalProtocolError(ProtocolError):
    """We were asked to build an invalid value (validation at construction)."""


class RemoteProtocolError(ProtocolError):
    """Bytes from a peer are malformed, oversized, unsigned or badly signed."""
