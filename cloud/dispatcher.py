"""The dispatcher: takes due messages from the outbox and sends them.

Each round (``tick(now)``, the time passed in) claims a few due messages
(a lease under a random claim token: ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, the one writer on SQLite, so two dispatchers never hold the same
message), reads the customer as they are now, picks a consented channel
with an address (none: the message is recorded ``skipped``), renders and
sends it, and records the result under the same claim. A failure that may
pass is tried again with exponential backoff, up to ``max_attempts``
claims; a permanent one, or the last try, is recorded ``failed``.

Never sent twice? The claim makes sure no two dispatchers send a message
at the same time. What it cannot cover is a crash after the provider took
the message and before ``finish_messages`` commits: the lease runs out and
the message is sent again. That second send carries the same idempotency
key (the SMS gateway's Idempotency-Key, the email's Message-ID, the file
sender's key), so a gateway that honours it, and the file sender, deliver
it once; an SMTP server that does not collapse Message-IDs delivers it twice.

Logs name message ids, kinds, channels and error codes, never an address,
a name or a text.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from .engagement_model import MessageContact, MessageRecord, MessageResult, MessageStatus
from .errors import StoreError
from .messages import choose_channel, idempotency_key, render
from .senders import Outgoing, SendError, Senders
from .storage import Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 6
    first_delay_ms: int = 30_000
    max_delay_ms: int = 3_600_000

    def delay_ms(self, attempts: int) -> int:
        """Wait before the next try, after ``attempts`` tries: 30 s, 1 min, 2 min, ... capped at 1 h."""
        return int(min(self.max_delay_ms, self.first_delay_ms * 2 ** max(0, attempts - 1)))


class Dispatcher:
    def __init__(
        self,
        storage: Storage,
        senders: Senders,
        *,
        portal_url: Callable[[str], str] | None = None,
        batch_size: int = 50,
        lease_ms: int = 300_000,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.storage = storage
        self.senders = senders
        self.portal_url = portal_url
        self.batch_size = batch_size
        self.lease_ms = lease_ms
        self.retry = retry or RetryPolicy()

    async def tick(self, now: int) -> int:
        """Claim and handle one round of due messages; how many were claimed.

        A message that went to a provider is marked at once; the others of the
        round (skipped, out of tries) are marked together in one transaction.
        """
        claim = secrets.token_hex(16)
        claimed = await self.storage.claim_messages(now, self.batch_size, self.lease_ms, claim)
        contacts = await self.storage.message_contacts([record.customer_id for record in claimed])
        settled: list[tuple[int, MessageResult]] = []
        for record in claimed:
            result, handed_over = await self._deliver(record, contacts.get(record.customer_id), now)
            if handed_over:
                await self._finish(claim, [(record.message_id, result)])
            else:
                settled.append((record.message_id, result))
        await self._finish(claim, settled)
        return len(claimed)

    async def _finish(self, claim: str, results: list[tuple[int, MessageResult]]) -> None:
        recorded = await self.storage.finish_messages(claim, results)
        if recorded != len(results):
            log.warning("%d of %d messages (ids %s) lost their claim before their result was recorded",
                        len(results) - recorded, len(results), ",".join(str(i) for i, _ in results))

    async def _deliver(self, record: MessageRecord, contact: MessageContact | None,
                       now: int) -> tuple[MessageResult, bool]:
        """The result, and whether the message was handed to a provider (so may have gone out)."""
        if record.attempts > self.retry.max_attempts:
            log.warning("message %d (%s) failed: out of tries", record.message_id, record.kind)
            return MessageResult(MessageStatus.FAILED, now, error="out of tries"), False
        if contact is None:
            log.info("message %d (%s) skipped: no such customer", record.message_id, record.kind)
            return MessageResult(MessageStatus.SKIPPED, now, error="unknown_customer"), False
        channel = choose_channel(contact)
        if channel is None:
            log.info("message %d (%s) skipped: no consented channel with an address", record.message_id, record.kind)
            return MessageResult(MessageStatus.SKIPPED, now, error="no_consent"), False
        text = render(record.kind, record.data, contact,
                      self.portal_url(record.brand_id) if self.portal_url is not None else None)
        to = contact.email if channel.value == "email" else contact.phone
        assert to is not None  # choose_channel only picks a channel with an address
        outgoing = Outgoing(f"message {record.message_id}", record.kind, channel, to, text.subject, text.text,
                            idempotency_key(record.dedupe_key))
        try:
            reference = await self.senders.for_channel(channel).send(outgoing)
        except SendError as exc:
            if exc.permanent or record.attempts >= self.retry.max_attempts:
                log.warning("message %d (%s) via %s failed for good: %s (try %d)",
                            record.message_id, record.kind, channel.value, exc.reason, record.attempts)
                return MessageResult(MessageStatus.FAILED, now, channel.value, exc.reason), True
            retry_at = now + self.retry.delay_ms(record.attempts)
            log.info("message %d (%s) via %s not sent: %s (try %d); again at %d",
                     record.message_id, record.kind, channel.value, exc.reason, record.attempts, retry_at)
            return MessageResult(MessageStatus.PENDING, now, channel.value, exc.reason, next_attempt_at=retry_at), True
        log.info("message %d (%s) sent via %s", record.message_id, record.kind, channel.value)
        return MessageResult(MessageStatus.SENT, now, channel.value, provider_ref=reference), True

    async def run(self, clock: Callable[[], int], *, idle_s: float = 1.0, error_s: float = 5.0) -> None:
        """Rounds until cancelled: back to back while messages are due, ``idle_s`` apart otherwise."""
        while True:
            try:
                claimed = await self.tick(clock())
            except StoreError:
                log.exception("message dispatch failed; trying again in %.0f s", error_s)
                await asyncio.sleep(error_s)
                continue
            if claimed < self.batch_size:
                await asyncio.sleep(idle_s)
