"""Validation of operator input (brands, programs, store keys), shared by backends.

Every check raises ConfigError naming the field, before any row is written.
"""

from __future__ import annotations

from protocol import LocalProtocolError, Program, key_id_for, load_public_key
from protocol.messages import check_slug
from protocol.program_settings import canonical_settings
from protocol.validate import check_text

from .errors import ConfigError


def _config_error(exc: LocalProtocolError) -> ConfigError:
    return ConfigError(exc.message, field=exc.field, code=exc.code)


def check_id(field: str, value: str) -> str:
    """Brand and store ids are slugs: they travel in every batch and downlink."""
    try:
        check_slug(field, value)
    except LocalProtocolError as exc:
        raise _config_error(exc) from exc
    return value


def check_name(value: str, *, max_len: int = 100) -> str:
    try:
        check_text("name", value, max_len, required=True)
    except LocalProtocolError as exc:
        raise _config_error(exc) from exc
    return value


def check_program(
    brand_id: str, version: int, name: str, points_per_unit: int, unit_amount: int, settings: str = "{}"
) -> Program:
    """The program, with its settings document validated and made canonical."""
    try:
        return Program(brand_id, version, name, points_per_unit, unit_amount, canonical_settings(settings))
    except LocalProtocolError as exc:
        raise _config_error(exc) from exc


def check_public_key(raw: bytes) -> str:
    """The key id of a raw 32-byte Ed25519 public key."""
    try:
        return key_id_for(load_public_key(raw))
    except LocalProtocolError as exc:
        raise _config_error(exc) from exc
    except ValueError as exc:  # cryptography refuses some 32-byte strings
        raise ConfigError(f"not an Ed25519 public key: {exc}", field="public_key") from exc


def parse_public_key_hex(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError as exc:
        raise ConfigError("the public key must be hex", field="public_key") from exc
    if len(raw) != 32:
        raise ConfigError(
            f"an Ed25519 public key is 32 bytes (64 hex digits), got {len(raw)}", field="public_key"
        )
    check_public_key(raw)
    return raw
