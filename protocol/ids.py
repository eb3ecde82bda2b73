"""UUIDv7 identifiers, made from a clock reading the caller passes in.

Python 3.11 has no ``uuid.uuid7``; the layout follows RFC 9562 section 5.7:
48 bits of Unix milliseconds, version, 12 random bits, variant, 62 random bits.
Time-ordered ids keep the edge's outbox and the cloud's op index append-mostly.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable

from .errors import LocalProtocolError

_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_UUID7_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
#: Bound ``fullmatch`` of the patterns above, for hot paths that already know the value is a str
#: (every op checks three ids: a function call less each is measurable).
match_uuid = _UUID_RE.fullmatch
match_uuid7 = _UUID7_RE.fullmatch


def uuid7(now_ms: int, randbytes: Callable[[int], bytes] = os.urandom) -> str:
    """Return a canonical UUIDv7 string for the given millisecond timestamp."""
    if not 0 <= now_ms < 1 << 48:
        raise LocalProtocolError("timestamp out of range for UUIDv7", field="now_ms")
    rand = int.from_bytes(randbytes(10), "big")
    rand_a = rand >> 68  # 12 bits
    rand_b = rand & ((1 << 62) - 1)
    value = (now_ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def is_uuid(value: object) -> bool:
    """True for a lower-case canonical UUID string (any version)."""
    return isinstance(value, str) and _UUID_RE.fullmatch(value) is not None


def is_uuid7(value: object) -> bool:
    """True for a lower-case canonical UUID string of version 7 and the RFC 9562 variant."""
    return isinstance(value, str) and _UUID7_RE.fullmatch(value) is not None


def uuid7_time_ms(value: str) -> int:
    """The millisecond timestamp inside a UUIDv7."""
    return uuid.UUID(value).int >> 80
