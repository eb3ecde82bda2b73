"""Erasing a customer's personal data from the ledger, written once for both backends.

One write transaction, in the batch path's lock order (the customer's row,
then the brand's change counter): the profile loses its name, phone, email,
card code and consent details and gets ``erased_at`` and a new version (so
every edge of the brand scrubs its copy with its next pull); its sales lose
their card tokens, its stored batch bodies the ops' personal data (marked
``redacted``); its portal sessions, sign-in codes and attempt counters and
its queued messages go; an ``erasures`` row records who, when and why.
Ledger entries, ops, sales and the balance stay, pointing at the anonymous
id. The consent column keeps ``erased_at`` too: the reconciler and the
downlink read that column already, so a late op from an offline edge is
scrubbed without a new column in the batch path (``is_erased``).

After the commit the backend reclaims the old bytes it can
(``reclaim``): SQLite checkpoints its WAL (TRUNCATE) and overwrote deleted
content on the spot (``secure_delete``); PostgreSQL VACUUMs the tables.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from protocol import LocalProtocolError
from protocol.privacy import ERASED_REASON, redact_batch_body, scrub_basis, scrub_sale_bytes
from protocol.validate import check_text

from .balances import lock_customers, take_versions
from .errors import AlreadyExists, ConfigError, NotFound
from .sql import Session

log = logging.getLogger(__name__)

#: The tables an erasure rewrites or deletes from (what ``reclaim`` vacuums on PostgreSQL).
TOUCHED_TABLES = ("customers", "consents", "sales", "batches", "inbox", "messages", "adjustments",
                  "portal_sessions", "otp_challenges", "portal_limits")
#: What applying a late batch for an erased customer wrote its received bytes to.
LATE_OP_TABLES = ("inbox", "batches", "sales")
#: Ops whose wire form can carry personal data (profile fields, card tokens, a free-text reason).
_PERSONAL_KINDS = ("enroll", "update_profile", "earn", "adjust")


@dataclass(frozen=True, slots=True)
class ErasureRecord:
    brand_id: str
    customer_id: str
    version: int
    actor: str
    reason: str
    operator_id: str | None
    at: int
    #: Rows rewritten or deleted per kind (no values), for the audit trail and the operator.
    scrubbed: dict[str, int] = field(default_factory=dict)


def is_erased(consent: str) -> bool:
    """Whether a customers row's consent column says the profile was erased."""
    if "erased_at" not in consent:  # the common case, without parsing
        return False
    try:
        doc = json.loads(consent)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("erased_at") is not None


def erased_consent(consent: str, now: int) -> str:
    """What stays of the enrollment consent: its source and time (the enrollment report counts
    them), no channels, no staff name."""
    try:
        doc = json.loads(consent)
    except ValueError:
        doc = {}
    kept = {k: doc.get(k) for k in ("source", "at")} if isinstance(doc, dict) else {}
    return json.dumps({**kept, "erased_at": now}, sort_keys=True, separators=(",", ":"))


def check_erasure(actor: str, reason: str) -> None:
    try:
        check_text("actor", actor, 100, required=True)
        check_text("reason", reason, 500, required=True)
    except LocalProtocolError as exc:
        raise ConfigError(exc.message, field=exc.field, code=exc.code) from exc


async def erase(
    q: Session, brand_id: str, customer_id: str, actor: str, reason: str, operator_id: str | None, now: int,
    contact_hashes: Sequence[str] = (),
) -> ErasureRecord:
    """Erase inside the caller's write transaction. ``contact_hashes`` are the portal's keyed
    hashes of the customer's phone and email (``otp.PortalKeys.contact_hash``), when the caller
    holds the portal secret: their sign-in codes and counters go too (else they expire within
    the hour)."""
    customer = (await lock_customers(q, [customer_id])).get(customer_id)
    if customer is None or customer.brand_id != brand_id:
        raise NotFound(f"no customer {customer_id!r} in brand {brand_id!r}", field="customer_id")
    if is_erased(customer.consent):
        raise AlreadyExists(f"customer {customer_id!r} is already erased", field="customer_id",
                            code="already_erased")
    version = await take_versions(q, brand_id, 1)
    await q.fetch(
        "UPDATE customers SET name = '', phone = NULL, email = NULL, card_code = NULL, consent = $1,"
        " version = $2, updated_at = $3, erased_at = $3 WHERE customer_id = $4",
        erased_consent(customer.consent, now), version, now, customer_id,
    )
    scrubbed: dict[str, int] = {"customers": 1}
    scrubbed["consents"] = len(await q.fetch(
        "DELETE FROM consents WHERE customer_id = $1 RETURNING id", customer_id))
    scrubbed["portal_sessions"] = len(await q.fetch(
        "DELETE FROM portal_sessions WHERE customer_id = $1 RETURNING token_hash", customer_id))
    # Queued messages would go nowhere now; sent ones hold kinds and amounts, never an address.
    scrubbed["messages"] = len(await q.fetch(
        "DELETE FROM messages WHERE customer_id = $1 AND status IN ('pending', 'sending') RETURNING message_id",
        customer_id))
    scrubbed["adjustments"] = len(await q.fetch(
        "UPDATE adjustments SET reason = $1 WHERE customer_id = $2 RETURNING op_id", ERASED_REASON, customer_id))
    if contact_hashes:
        scrubbed["otp_challenges"] = len(await q.fetch(
            f"DELETE FROM otp_challenges WHERE {q.dialect.any_of('contact_hash', 1)} RETURNING challenge_id",
            q.dialect.strings(contact_hashes)))
        keys = [f"{kind}:contact:{h}" for h in contact_hashes for kind in ("sent", "failed")]
        scrubbed["portal_limits"] = len(await q.fetch(
            f"DELETE FROM portal_limits WHERE {q.dialect.any_of('key', 1)} RETURNING key", q.dialect.strings(keys)))
    scrubbed["sales"] = await _scrub_sales(q, customer_id)
    # A linked card is a token, not a card number, but it still points at the person.
    scrubbed["card_links"] = len(await q.fetch(
        "DELETE FROM card_links WHERE customer_id = $1 RETURNING token", customer_id))
    await q.fetch("DELETE FROM card_streaks WHERE customer_id = $1", customer_id)
    scrubbed["claimed_sales"] = await _scrub_claimed(q, customer_id)
    scrubbed["batches"] = await _redact_batches(q, customer_id)
    await q.fetch(
        "INSERT INTO erasures (brand_id, customer_id, version, actor, reason, operator_id, at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        brand_id, customer_id, version, actor, reason, operator_id, now,
    )
    return ErasureRecord(brand_id, customer_id, version, actor, reason, operator_id, now, scrubbed)


async def _scrub_sales(q: Session, customer_id: str) -> int:
    rows = await q.fetch(
        "SELECT store_id, sale_id, basis FROM sales WHERE customer_id = $1 AND basis IS NOT NULL", customer_id)
    count = 0
    for store_id, sale_id, basis in rows:
        clean = scrub_basis(bytes(basis))
        if clean != bytes(basis):
            await q.fetch("UPDATE sales SET basis = $1 WHERE store_id = $2 AND sale_id = $3", clean, store_id, sale_id)
            count += 1
    return count


async def _scrub_claimed(q: Session, customer_id: str) -> int:
    """Receipts the customer claimed keep their lines and amounts, not the card tokens paid with."""
    rows = await q.fetch("SELECT code_hash, sale FROM claimable_sales WHERE customer_id = $1", customer_id)
    count = 0
    for code_hash, sale in rows:
        clean = scrub_sale_bytes(bytes(sale))
        if clean != bytes(sale):
            await q.fetch("UPDATE claimable_sales SET sale = $1 WHERE code_hash = $2", clean, code_hash)
            count += 1
    return count


async def _redact_batches(q: Session, customer_id: str) -> int:
    """Scrub the applied batches that carried the customer's ops (found through ``ops``)."""
    kinds = q.dialect.strings(list(_PERSONAL_KINDS))
    wanted = await q.fetch(
        f"SELECT DISTINCT store_id, seq FROM ops WHERE customer_id = $1 AND {q.dialect.any_of('kind', 2)}"
        " ORDER BY store_id, seq",
        customer_id, kinds,
    )
    count = 0
    for store_id, seq in wanted:
        rows = await q.fetch("SELECT body FROM batches WHERE store_id = $1 AND seq = $2", store_id, seq)
        if not rows:
            continue
        body = redact_batch_body(bytes(rows[0][0]), {customer_id})
        if body is not None:
            await q.fetch("UPDATE batches SET body = $1 WHERE store_id = $2 AND seq = $3", body, store_id, seq)
            count += 1
    return count


class ErasureLedger:
    """``Storage.erase_customer``, shared by both backends (``ledger.SqlLedger`` includes it)."""

    def _write(self) -> AbstractAsyncContextManager[Session]:
        raise NotImplementedError

    async def reclaim(self, tables: Sequence[str]) -> None:
        """Make the old bytes of ``tables`` go where the backend can; outside any transaction."""
        raise NotImplementedError

    async def erase_customer(
        self, brand_id: str, customer_id: str, actor: str, reason: str, now: int,
        operator_id: str | None = None, contact_hashes: Sequence[str] = (),
    ) -> ErasureRecord:
        check_erasure(actor, reason)
        async with self._write() as q:
            # One person, every profile: a merged duplicate's id means its survivor, and the
            # tombstones merged into the survivor keep identifiers of their own (cloud.merges).
            alias = await q.fetch("SELECT merged_into FROM customers WHERE customer_id = $1 AND brand_id = $2",
                                  customer_id, brand_id)
            if alias and alias[0][0] is not None:
                customer_id = alias[0][0]
            tombstones = [r[0] for r in await q.fetch(
                "SELECT customer_id FROM customers WHERE merged_into = $1 AND erased_at IS NULL", customer_id)]
            await lock_customers(q, [customer_id, *tombstones])  # all first: the counter is locked last
            record = await erase(q, brand_id, customer_id, actor, reason, operator_id, now, contact_hashes)
            for tombstone in tombstones:
                await erase(q, brand_id, tombstone, actor, reason, operator_id, now)
            if tombstones:
                record.scrubbed["merged_profiles"] = len(tombstones)
        await self.reclaim(TOUCHED_TABLES)
        log.info("customer %s of brand %s erased (version %d): %s", customer_id, brand_id, record.version,
                 record.scrubbed)
        return record
