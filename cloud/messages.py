"""Which messages an event causes, and what they say (pure functions).

``batch_effects`` maps a reconciled batch to the outbox rows and consent
records the batch's own transaction writes: a welcome per customer enrolled
(``welcome:<customer_id>``), the points of every applied earn
(``earned:<op_id>``), and the rewards an earn brought within reach
(``reward:<op_id>``) when the balance crosses a reward's points. The dedupe
keys make writing the same event twice store one message, whatever path
(a resent batch, a retried portal sign-up) writes it.

Channel and address are chosen when the message is sent (``choose_channel``
on the customer as they are then): a consent withdrawn after the event
still stops it, and an address erased later was never copied here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from protocol import Program
from protocol.rewards import Reward

from .engagement_model import Channel, ConsentRecord, MessageContact, MessageKind, OutboxMessage, PortalEnrollment
from .model import BatchOutcome, CustomerState, LedgerEntry

#: ``enrolled_store`` and the ledger's store of a sign-up made on the portal without a store in its link.
PORTAL_STORE = "portal"
SIGNUP_BONUS_KIND = "signup_bonus"

_ENROLL = "enroll"
_EARN = "earn"
_APPLIED = "applied"


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class BatchEffects:
    messages: tuple[OutboxMessage, ...] = ()
    consents: tuple[ConsentRecord, ...] = ()


def welcome_message(brand_id: str, customer_id: str, at: int, signup_bonus: int = 0) -> OutboxMessage:
    data = {"signup_bonus": signup_bonus} if signup_bonus else {}
    return OutboxMessage(f"welcome:{customer_id}", brand_id, customer_id, MessageKind.WELCOME, _json(data), at)


def points_expiring_message(brand_id: str, customer_id: str, points: int, expires_at: int,
                            now: int) -> OutboxMessage:
    """The notice that ``points`` expire at ``expires_at`` (ms); one per customer and day of expiry."""
    day = datetime.fromtimestamp(expires_at / 1000, tz=UTC).date().isoformat()
    return OutboxMessage(
        f"expiring:{customer_id}:{day}", brand_id, customer_id, MessageKind.POINTS_EXPIRING,
        _json({"points": points, "expires_at": expires_at}), now,
    )


def enrollment_consents(customer: CustomerState, terminal_id: str | None) -> tuple[ConsentRecord, ...]:
    """The consent records an enrollment states (its consent JSON: channels, source, staff, time)."""
    consent = json.loads(customer.consent)
    return tuple(
        ConsentRecord(customer.brand_id, customer.customer_id, channel, True, int(consent["at"]),
                      str(consent["source"]), terminal_id, consent.get("staff"))
        for channel in consent.get("channels", ())
    )


def needs_program(outcome: BatchOutcome) -> bool:
    """Whether ``batch_effects`` looks at the program (only earns can reach a reward)."""
    return any(entry.kind == _EARN and entry.points > 0 for entry in outcome.entries)


def batch_effects(outcome: BatchOutcome, program: Program | None) -> BatchEffects:
    """The messages and consent records a batch's outcome causes."""
    customers = {c.customer_id: c for c in outcome.customers}
    messages: list[OutboxMessage] = []
    consents: list[ConsentRecord] = []
    for op in outcome.ops:
        if op.kind == _ENROLL and op.status == _APPLIED:
            customer = customers[op.customer_id]
            messages.append(welcome_message(customer.brand_id, op.customer_id, op.at))
            consents.extend(enrollment_consents(customer, op.terminal_id))
    rewards = program.options.rewards if program is not None else ()
    # Walk each customer's balance through the batch, from the balance it started with.
    running = {cid: c.balance for cid, c in customers.items()}
    for entry in outcome.entries:
        running[entry.customer_id] -= entry.points
    for entry in outcome.entries:
        before = running[entry.customer_id]
        after = running[entry.customer_id] = before + entry.points
        if entry.kind != _EARN or entry.points <= 0:
            continue
        brand_id = customers[entry.customer_id].brand_id
        messages.extend(earned_messages(brand_id, entry.customer_id, entry.op_id, before, after, entry.at, rewards))
    return BatchEffects(tuple(messages), tuple(consents))


def earned_messages(brand_id: str, customer_id: str, op_id: str, before: int, after: int, at: int,
                    rewards: Sequence[Reward]) -> list[OutboxMessage]:
    """Points earned (``after - before``), and the rewards the new balance reaches, if any."""
    # What _json({"points": ..., "balance": ...}) writes (keys sorted, ints as decimal), without
    # encoding a dict per earn.
    data = f'{{"balance":{after},"points":{after - before}}}'
    messages = [OutboxMessage(f"earned:{op_id}", brand_id, customer_id, MessageKind.POINTS_EARNED, data, at)]
    reached = [r for r in rewards if before < r.points <= after]
    if reached:
        messages.append(OutboxMessage(
            f"reward:{op_id}", brand_id, customer_id, MessageKind.REWARD_REACHED,
            _json({"balance": after, "rewards": [{"name": r.name, "points": r.points} for r in reached]}), at,
        ))
    return messages


@dataclass(frozen=True, slots=True)
class EnrollmentRows:
    customer: CustomerState
    consents: tuple[ConsentRecord, ...]
    entries: tuple[LedgerEntry, ...]
    messages: tuple[OutboxMessage, ...]


def portal_enrollment_rows(enrollment: PortalEnrollment, version: int, signup_bonus: int,
                           bonus_op_id: str) -> EnrollmentRows:
    """Every row a portal sign-up writes in its one transaction: the customer (stamped with the
    next change version, so it goes down to every edge of the brand), the consent records, the
    signup bonus as a ledger entry (once: the customer is created once), and the welcome."""
    e = enrollment
    store = e.store_id or PORTAL_STORE
    consent = {"at": e.at, "channels": list(e.channels), "source": "portal", "staff": None, "terms_accepted": True}
    customer = CustomerState(
        customer_id=e.customer_id, brand_id=e.brand_id, name=e.name, phone=e.phone, email=e.email,
        card_code=None, consent=_json(consent), balance=signup_bonus, version=version, enrolled_store=store,
        created_at=e.at, updated_at=e.at,
    )
    entries = (LedgerEntry(e.customer_id, bonus_op_id, store, None, SIGNUP_BONUS_KIND, signup_bonus, e.at),)
    return EnrollmentRows(
        customer=customer,
        consents=enrollment_consents(customer, None),
        entries=entries if signup_bonus > 0 else (),
        messages=(welcome_message(e.brand_id, e.customer_id, e.at, signup_bonus),),
    )


# ---- sending


def choose_channel(contact: MessageContact) -> Channel | None:
    """Email if consented and known, else SMS if consented and known, else nothing (skip)."""
    if Channel.EMAIL in contact.consents and contact.email:
        return Channel.EMAIL
    if Channel.PHONE in contact.consents and contact.phone:
        return Channel.PHONE
    return None


def idempotency_key(dedupe_key: str) -> str:
    """A stable key for one message, the same on every attempt and every dispatcher:
    the SMS gateway's Idempotency-Key, the email's Message-ID, the file sender's key."""
    return hashlib.sha256(b"loyalty-message\x00" + dedupe_key.encode()).hexdigest()[:40]


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str


def _points(n: int) -> str:
    return f"{n} point" if abs(n) == 1 else f"{n} points"


def render(kind: str, data_json: str, contact: MessageContact, portal_url: str | None = None) -> Rendered:
    """The subject and plain text of a message (SMS use the text alone)."""
    data: dict[str, Any] = json.loads(data_json)
    brand = contact.brand_name
    hello = f"Hello {contact.name}," if contact.name else "Hello,"
    see = f" See your points: {portal_url}" if portal_url else ""
    if kind == MessageKind.WELCOME:
        bonus = data.get("signup_bonus", 0)
        extra = f" You start with {_points(bonus)}." if bonus else ""
        return Rendered(f"Welcome to {brand} rewards",
                        f"{hello} welcome to {brand} rewards.{extra}{see}")
    if kind == MessageKind.POINTS_EARNED:
        return Rendered(f"You earned {_points(data['points'])} at {brand}",
                        f"{hello} you earned {_points(data['points'])} at {brand}."
                        f" Your balance is {_points(data['balance'])}.{see}")
    if kind == MessageKind.REWARD_REACHED:
        names = ", ".join(f"{r['name']} ({_points(r['points'])})" for r in data["rewards"])
        return Rendered(f"A reward is waiting for you at {brand}",
                        f"{hello} with {_points(data['balance'])} you can now take: {names}.{see}")
    if kind == MessageKind.POINTS_EXPIRING:
        day = datetime.fromtimestamp(data["expires_at"] / 1000, tz=UTC).date().isoformat()
        return Rendered(f"Your {brand} points expire soon",
                        f"{hello} {_points(data['points'])} of your {brand} balance expire on {day}.{see}")
    if kind == MessageKind.ONE_TIME_CODE:
        return Rendered(f"Your {brand} code: {data['code']}",
                        f"Your {brand} code is {data['code']}. It is valid for 10 minutes."
                        " If you did not ask for it, ignore this message.")
    raise ValueError(f"no text for message kind {kind!r}")  # a kind added without its text: a bug
