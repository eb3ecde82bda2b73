"""Storage of messages, consents and the portal, written once for both backends.

A mixin of ``SQLiteStorage`` and ``PgStorage`` on ``sql.Session``, like
``ledger.SqlLedger``. Where the dialects differ it says so:

- dispatchers claim messages with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL
  (two dispatchers, in two processes or on two hosts, each take rows the
  other has not locked) and under the one writer on SQLite; a claim is a
  lease (``claimed_until``), so a dispatcher that died leaves its messages
  to the next one once the lease is over;
- a portal sign-up takes an advisory lock of its brand on PostgreSQL (the
  single writer on SQLite), so two sign-ups with one phone cannot both
  create a customer; the change counter is taken last, as batches do, so
  locks are always taken in one order.

The decisions (which channel, which limit, which rows) are made by the pure
modules; this module holds the SQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from .engagement_model import (
    ConsentRecord,
    MessageContact,
    MessageRecord,
    MessageResult,
    MessageStatus,
    OtpChallenge,
    OutboxMessage,
    PortalEnrollment,
    PortalSession,
    consented_channels,
)
from .ledger import CUSTOMER_COLUMNS
from .messages import portal_enrollment_rows
from .model import CustomerState, LedgerEntry, astuple
from .sql import Row, Session

MESSAGE_COLUMNS = (
    "message_id, dedupe_key, brand_id, customer_id, kind, data, status, channel, attempts, next_attempt_at,"
    " claimed_until, claim_token, last_error, provider_ref, created_at, finished_at"
)
CONSENT_COLUMNS = "brand_id, customer_id, channel, granted, at, source, terminal_id, staff"
_CHALLENGE_COLUMNS = "challenge_id, brand_id, contact_hash, code_hash, created_at, expires_at, tries, used_at"
_SESSION_COLUMNS = "token_hash, brand_id, customer_id, created_at, expires_at"
_ENTRY_COLUMNS = "customer_id, op_id, store_id, sale_id, kind, points, at"
_FINAL = (MessageStatus.SENT, MessageStatus.SKIPPED, MessageStatus.FAILED)
_ENROLL_LOCK = "loyalty-portal-enroll:"
INSERT_MESSAGE = (
    "INSERT INTO messages (dedupe_key, brand_id, customer_id, kind, data, created_at)"
    " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (dedupe_key) DO NOTHING"
)
INSERT_CONSENT = f"INSERT INTO consents ({CONSENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"


def _marks(columns: str) -> str:
    return ", ".join(f"${n}" for n in range(1, columns.count(",") + 2))


def _consent(row: Row) -> ConsentRecord:
    return ConsentRecord(row[0], row[1], row[2], bool(row[3]), *row[4:])


async def insert_messages(q: Session, messages: Sequence[OutboxMessage]) -> None:
    """Insert in the caller's transaction (a batch's, the expiry job's); a dedupe key already
    stored keeps its message."""
    await q.many(INSERT_MESSAGE, [astuple(m) for m in messages])


async def insert_consents(q: Session, consents: Sequence[ConsentRecord]) -> None:
    await q.many(INSERT_CONSENT, [astuple(c) for c in consents])


class SqlPortalTx:
    """The ``PortalTx`` of one open write transaction: a challenge read is locked until it ends."""

    def __init__(self, q: Session) -> None:
        self._q = q

    async def challenge(self, challenge_id: str) -> OtpChallenge | None:
        rows = await self._q.fetch(
            f"SELECT {_CHALLENGE_COLUMNS} FROM otp_challenges WHERE challenge_id = $1{self._q.dialect.for_update}",
            challenge_id,
        )
        return OtpChallenge(*rows[0]) if rows else None

    async def save_challenge(self, challenge: OtpChallenge) -> None:
        await self._q.fetch(
            f"INSERT INTO otp_challenges ({_CHALLENGE_COLUMNS}) VALUES ({_marks(_CHALLENGE_COLUMNS)})"
            " ON CONFLICT (challenge_id) DO UPDATE SET tries = excluded.tries, used_at = excluded.used_at",
            *astuple(challenge),
        )

    async def count(self, key: str, window_start: int, add: int) -> int:
        rows = await self._q.fetch(
            "INSERT INTO portal_limits (key, window_start, count) VALUES ($1, $2, $3)"
            " ON CONFLICT (key) DO UPDATE SET count = CASE WHEN portal_limits.window_start = excluded.window_start"
            " THEN portal_limits.count + excluded.count ELSE excluded.count END,"
            " window_start = excluded.window_start RETURNING count",
            key, window_start, add,
        )
        return int(rows[0][0])


class SqlEngagement:
    """Messages, consents and portal storage; mixed into both backends."""

    def _read(self) -> AbstractAsyncContextManager[Session]:
        raise NotImplementedError

    def _write(self) -> AbstractAsyncContextManager[Session]:
        raise NotImplementedError

    # ---- messages

    async def add_messages(self, messages: Sequence[OutboxMessage]) -> int:
        inserted = 0
        async with self._write() as q:
            for message in messages:
                inserted += len(await q.fetch(INSERT_MESSAGE + " RETURNING 1", *astuple(message)))
        return inserted

    async def claim_messages(self, now: int, limit: int, lease_ms: int, claim_token: str) -> list[MessageRecord]:
        async with self._write() as q:
            skip_locked = "" if q.dialect.sqlite else " FOR UPDATE SKIP LOCKED"
            rows = await q.fetch(
                "UPDATE messages SET status = 'sending', claim_token = $1, claimed_until = $2,"
                " attempts = attempts + 1 WHERE message_id IN (SELECT message_id FROM messages"
                " WHERE status IN ('pending', 'sending') AND ((status = 'pending' AND next_attempt_at <= $3)"
                f" OR (status = 'sending' AND claimed_until <= $3)) ORDER BY message_id LIMIT $4{skip_locked})"
                f" RETURNING {MESSAGE_COLUMNS}",
                claim_token, now + lease_ms, now, limit,
            )
        return sorted((MessageRecord(*r) for r in rows), key=lambda m: m.message_id)

    async def finish_messages(self, claim_token: str, results: Sequence[tuple[int, MessageResult]]) -> int:
        if not results:
            return 0
        recorded = 0
        async with self._write() as q:
            for message_id, r in results:
                recorded += len(await q.fetch(
                    "UPDATE messages SET status = $1, channel = COALESCE($2, channel), last_error = $3,"
                    " provider_ref = COALESCE($4, provider_ref), next_attempt_at = $5, finished_at = $6,"
                    " claim_token = NULL, claimed_until = NULL"
                    " WHERE message_id = $7 AND claim_token = $8 AND status = 'sending' RETURNING message_id",
                    r.status.value, r.channel, r.error, r.provider_ref, r.next_attempt_at,
                    r.at if r.status in _FINAL else None, message_id, claim_token,
                ))
        return recorded

    async def message_contacts(self, customer_ids: Sequence[str]) -> dict[str, MessageContact]:
        ids = sorted(set(customer_ids))
        if not ids:
            return {}
        async with self._read() as q:
            people = await q.fetch(
                "SELECT c.customer_id, c.brand_id, b.name, c.name, c.phone, c.email FROM customers c"
                f" JOIN brands b ON b.brand_id = c.brand_id WHERE {q.dialect.any_of('c.customer_id', 1)}",
                q.dialect.strings(ids),
            )
            rows = await q.fetch(
                f"SELECT {CONSENT_COLUMNS} FROM consents WHERE {q.dialect.any_of('customer_id', 1)} ORDER BY at, id",
                q.dialect.strings(ids),
            )
        consents: dict[str, list[ConsentRecord]] = {}
        for row in rows:
            consents.setdefault(row[1], []).append(_consent(row))
        return {r[0]: MessageContact(r[0], r[1], r[2], r[3], r[4], r[5], consented_channels(consents.get(r[0], ())))
                for r in people}

    async def list_messages(self, customer_id: str | None = None) -> list[MessageRecord]:
        where, params = ("WHERE customer_id = $1", (customer_id,)) if customer_id is not None else ("", ())
        async with self._read() as q:
            rows = await q.fetch(f"SELECT {MESSAGE_COLUMNS} FROM messages {where} ORDER BY message_id", *params)
        return [MessageRecord(*r) for r in rows]

    # ---- consents

    @staticmethod
    async def _consents(q: Session, customer_id: str) -> list[ConsentRecord]:
        rows = await q.fetch(
            f"SELECT {CONSENT_COLUMNS} FROM consents WHERE customer_id = $1 ORDER BY at, id", customer_id
        )
        return [_consent(r) for r in rows]

    async def record_consent(self, record: ConsentRecord) -> None:
        async with self._write() as q:
            await q.fetch(INSERT_CONSENT, *astuple(record))

    async def consent_history(self, customer_id: str) -> list[ConsentRecord]:
        async with self._read() as q:
            return await self._consents(q, customer_id)

    # ---- customers, for the portal

    async def find_customer(self, brand_id: str, *, phone: str | None = None,
                            email: str | None = None) -> CustomerState | None:
        async with self._read() as q:
            return await self._find_customer(q, brand_id, phone, email)

    @staticmethod
    async def _find_customer(q: Session, brand_id: str, phone: str | None, email: str | None) -> CustomerState | None:
        column, value = ("phone", phone) if phone is not None else ("email", email)
        if value is None:
            return None
        # A merged duplicate (cloud/merges.py) that kept this phone or email stands for its survivor.
        rows = await q.fetch(
            f"SELECT {CUSTOMER_COLUMNS} FROM customers WHERE customer_id = (SELECT COALESCE(merged_into, customer_id)"
            f" FROM customers WHERE brand_id = $1 AND {column} = $2 ORDER BY created_at, customer_id LIMIT 1)",
            brand_id, value,
        )
        return CustomerState(*rows[0]) if rows else None

    async def get_customer(self, customer_id: str) -> CustomerState | None:
        async with self._read() as q:
            rows = await q.fetch(  # a merged id gives its survivor
                f"SELECT {CUSTOMER_COLUMNS} FROM customers WHERE customer_id ="
                " (SELECT COALESCE(merged_into, customer_id) FROM customers WHERE customer_id = $1)", customer_id)
        return CustomerState(*rows[0]) if rows else None

    async def customer_entries(self, customer_id: str) -> list[LedgerEntry]:
        async with self._read() as q:
            rows = await q.fetch(
                f"SELECT {_ENTRY_COLUMNS} FROM ledger_entries WHERE customer_id = $1 ORDER BY at, id", customer_id
            )
        return [LedgerEntry(*r) for r in rows]

    @staticmethod
    async def _next_change_version(q: Session, brand_id: str) -> int:
        """The next version of the brand's change counter pulls page on. On PostgreSQL its row
        stays locked until commit, so versions commit in counter order."""
        rows = await q.fetch(
            "UPDATE brand_counters SET value = value + 1 WHERE brand_id = $1 RETURNING value", brand_id
        )
        return int(rows[0][0])

    async def enroll_customer(self, enrollment: PortalEnrollment, signup_bonus: int,
                              bonus_op_id: str) -> tuple[CustomerState, bool]:
        async with self._write() as q:
            if not q.dialect.sqlite:
                await q.fetch("SELECT pg_advisory_xact_lock(hashtext($1))", _ENROLL_LOCK + enrollment.brand_id)
            for phone, email in ((enrollment.phone, None), (None, enrollment.email)):
                found = await self._find_customer(q, enrollment.brand_id, phone, email)
                if found is not None:
                    return found, False
            version = await self._next_change_version(q, enrollment.brand_id)
            rows = portal_enrollment_rows(enrollment, version, signup_bonus, bonus_op_id)
            await q.fetch(f"INSERT INTO customers ({CUSTOMER_COLUMNS}) VALUES ({_marks(CUSTOMER_COLUMNS)})",
                          *astuple(rows.customer))
            await insert_consents(q, rows.consents)
            await q.many(f"INSERT INTO ledger_entries ({_ENTRY_COLUMNS}) VALUES ({_marks(_ENTRY_COLUMNS)})",
                         [astuple(e) for e in rows.entries])
            await insert_messages(q, rows.messages)
        return rows.customer, True

    # ---- portal codes, limits and sessions

    @asynccontextmanager
    async def portal_tx(self) -> AsyncIterator[SqlPortalTx]:
        async with self._write() as q:
            yield SqlPortalTx(q)

    async def create_session(self, session: PortalSession) -> None:
        async with self._write() as q:
            await q.fetch(f"INSERT INTO portal_sessions ({_SESSION_COLUMNS}) VALUES ({_marks(_SESSION_COLUMNS)})",
                          *astuple(session))

    async def find_session(self, token_hash: str, now: int) -> PortalSession | None:
        async with self._read() as q:
            rows = await q.fetch(
                f"SELECT {_SESSION_COLUMNS} FROM portal_sessions WHERE token_hash = $1 AND expires_at > $2",
                token_hash, now,
            )
        return PortalSession(*rows[0]) if rows else None

    async def delete_session(self, token_hash: str) -> None:
        async with self._write() as q:
            await q.fetch("DELETE FROM portal_sessions WHERE token_hash = $1", token_hash)

    async def prune_portal(self, now: int, limit_window_ms: int) -> int:
        async with self._write() as q:
            gone = await q.fetch("DELETE FROM otp_challenges WHERE expires_at <= $1 RETURNING 1", now)
            gone += await q.fetch("DELETE FROM portal_sessions WHERE expires_at <= $1 RETURNING 1", now)
            gone += await q.fetch("DELETE FROM portal_limits WHERE window_start <= $1 RETURNING 1",
                                  now - limit_window_ms)
        return len(gone)
