"""Records of the customer-facing side of the cloud: messages, consents, the portal.

Plain frozen dataclasses, filled by both storage backends (the field order
of a record written in bulk is the column order of its table) and read by
the pure modules (``messages``, ``otp``, the portal's pages). None of them
holds a destination address: phones and emails stay on the customer row and
are read when a message is sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class MessageKind(StrEnum):
    WELCOME = "welcome"
    POINTS_EARNED = "points_earned"
    REWARD_REACHED = "reward_reached"
    POINTS_EXPIRING = "points_expiring"
    #: A portal sign-in code: sent at once by the portal, never stored with its code.
    ONE_TIME_CODE = "one_time_code"


class MessageStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"  # claimed by a dispatcher until ``claimed_until``
    SENT = "sent"
    SKIPPED = "skipped"  # no consented channel with an address: kept, never sent
    FAILED = "failed"  # refused for good, or out of tries


class Channel(StrEnum):
    """Consent channels; a ``phone`` message goes out as an SMS."""

    EMAIL = "email"
    PHONE = "phone"


CHANNELS = tuple(Channel)
CONSENT_SOURCES = ("pos", "kiosk", "portal", "qr", "import")


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A message to write in the same transaction as the event that causes it.

    ``dedupe_key`` (e.g. ``welcome:<customer_id>``, ``earned:<op_id>``) is
    unique: writing the same event twice stores one message. ``data`` is JSON
    with amounts and names of rewards, never contact details.
    """

    dedupe_key: str
    brand_id: str
    customer_id: str
    kind: str
    data: str
    created_at: int


@dataclass(frozen=True, slots=True)
class MessageRecord:
    message_id: int
    dedupe_key: str
    brand_id: str
    customer_id: str
    kind: str
    data: str
    status: str
    channel: str | None
    attempts: int
    next_attempt_at: int
    claimed_until: int | None
    claim_token: str | None
    last_error: str | None
    provider_ref: str | None
    created_at: int
    finished_at: int | None


@dataclass(frozen=True, slots=True)
class MessageResult:
    """How a claimed message ended this time: sent, skipped, failed, or back to pending."""

    status: MessageStatus
    at: int
    channel: str | None = None
    error: str | None = None
    provider_ref: str | None = None
    next_attempt_at: int = 0


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    """One change of a customer's consent to be contacted on a channel."""

    brand_id: str
    customer_id: str
    channel: str
    granted: bool
    at: int
    source: str
    terminal_id: str | None
    staff: str | None


def consented_channels(records: Iterable[ConsentRecord]) -> frozenset[str]:
    """The channels whose latest record (by time, then by the order given) grants consent."""
    latest: dict[str, tuple[int, int, bool]] = {}
    for order, record in enumerate(records):
        key = (record.at, order)
        if record.channel not in latest or key >= latest[record.channel][:2]:
            latest[record.channel] = (record.at, order, record.granted)
    return frozenset(channel for channel, (_, _, granted) in latest.items() if granted)


@dataclass(frozen=True, slots=True)
class MessageContact:
    """Where a message can go, read at send time (never stored with the message)."""

    customer_id: str
    brand_id: str
    brand_name: str
    name: str
    phone: str | None
    email: str | None
    consents: frozenset[str]


@dataclass(frozen=True, slots=True)
class OtpChallenge:
    """A sign-in code sent to a phone or an email: only keyed hashes are stored."""

    challenge_id: str
    brand_id: str
    contact_hash: str
    code_hash: str
    created_at: int
    expires_at: int
    tries: int
    used_at: int | None


@dataclass(frozen=True, slots=True)
class PortalSession:
    token_hash: str
    brand_id: str
    customer_id: str
    created_at: int
    expires_at: int


@dataclass(frozen=True, slots=True)
class PortalEnrollment:
    """A customer signing up through the portal, with the consent they gave."""

    customer_id: str
    brand_id: str
    store_id: str | None
    name: str
    phone: str | None
    email: str | None
    channels: tuple[str, ...]
    at: int
