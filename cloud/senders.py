"""How a message leaves the cloud: one narrow interface, three implementations.

``Sender.send(Outgoing)`` either returns (the provider's reference, if any)
or raises ``SendError`` saying whether trying again could help. Every
implementation carries the message's idempotency key, the same on every
attempt: SMTP as the Message-ID, the SMS gateway as its Idempotency-Key
header, the file sender as a key it never writes twice.

Errors name codes and exception types only: an SMTP refusal quotes the
address back, and addresses never reach a log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Protocol

import aiohttp

from .engagement_model import Channel

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 20.0
MAX_GATEWAY_REPLY_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Outgoing:
    ref: str  # what logs may name: "message 42", "code a1b2..."
    kind: str
    channel: Channel
    to: str
    subject: str
    text: str
    idempotency_key: str


class SendError(Exception):
    """The message did not go. ``permanent``: the same message will never go (bad address, refused)."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class Sender(Protocol):
    async def send(self, message: Outgoing) -> str | None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Senders:
    """The sender of each channel."""

    email: Sender
    phone: Sender

    def for_channel(self, channel: Channel) -> Sender:
        return self.email if channel is Channel.EMAIL else self.phone

    async def close(self) -> None:
        await self.email.close()
        if self.phone is not self.email:
            await self.phone.close()


# ---- file


class FileSender:
    """Appends each message as a JSON line to a file (mode 0600): the demo's and tests' mailbox.

    A key already in the file is not written again, so a message sent twice
    (a dispatcher that died between sending and marking) appears once.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys: set[str] | None = None
        self._lock = asyncio.Lock()

    def _load_keys(self) -> set[str]:
        keys: set[str] = set()
        try:
            with self.path.open(encoding="utf-8") as fh:
                for line in fh:
                    try:
                        keys.add(json.loads(line)["idempotency_key"])
                    except (ValueError, KeyError, TypeError):
                        continue  # a torn last line from a crash: its message was never marked sent
        except FileNotFoundError:
            pass
        return keys

    def _append(self, line: str) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = "\n" + line  # end a line torn by a crash, so this one stays readable
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    async def send(self, message: Outgoing) -> str | None:
        async with self._lock:
            try:
                if self._keys is None:
                    self._keys = await asyncio.to_thread(self._load_keys)
                if message.idempotency_key not in self._keys:
                    record = {"ref": message.ref, "idempotency_key": message.idempotency_key, "kind": message.kind,
                              "channel": message.channel.value, "to": message.to, "subject": message.subject,
                              "text": message.text}
                    await asyncio.to_thread(self._append, json.dumps(record, ensure_ascii=False) + "\n")
                    self._keys.add(message.idempotency_key)
            except OSError as exc:
                raise SendError(f"file {type(exc).__name__} errno {exc.errno}", permanent=False) from exc
        return None

    async def close(self) -> None:
        return None


# ---- SMTP


class SmtpSender:
    """Email through an SMTP server (stdlib smtplib, on a worker thread)."""

    def __init__(self, host: str, port: int, from_address: str, *, starttls: bool = False,
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.host = host
        self.port = port
        self.from_address = from_address
        self.starttls = starttls
        self.timeout = timeout
        self.domain = from_address.rpartition("@")[2] or "localhost"

    def message_id(self, idempotency_key: str) -> str:
        """Deterministic: a resent email carries the same Message-ID, which receivers may collapse."""
        return f"<{idempotency_key}@{self.domain}>"

    def _build(self, message: Outgoing) -> EmailMessage:
        email = EmailMessage()
        email["From"] = self.from_address
        email["To"] = message.to
        email["Subject"] = message.subject
        email["Date"] = formatdate(usegmt=True)
        email["Message-ID"] = self.message_id(message.idempotency_key)
        email.set_content(message.text)
        return email

    def _send_blocking(self, email: EmailMessage) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
            smtp.send_message(email)

    async def send(self, message: Outgoing) -> str | None:
        email = self._build(message)
        try:
            await asyncio.to_thread(self._send_blocking, email)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = sorted({code for code, _ in exc.recipients.values()})
            raise SendError(f"smtp recipient refused {codes}", permanent=all(c >= 500 for c in codes)) from exc
        except smtplib.SMTPResponseException as exc:
            raise SendError(f"smtp {exc.smtp_code}", permanent=exc.smtp_code >= 500) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise SendError(f"smtp {type(exc).__name__}", permanent=False) from exc
        return str(email["Message-ID"])

    async def close(self) -> None:
        return None


# ---- SMS gateway


class SmsGatewaySender:
    """SMS through an HTTP gateway: ``POST url`` with JSON ``{"to", "text", "reference"}``,
    ``Authorization: Bearer <api key>`` and ``Idempotency-Key``; a 2xx answer's ``id`` is kept.

    4xx answers other than 408 and 429 are permanent (the gateway refused this message);
    5xx, 408, 429, timeouts and connection errors are tried again later.
    """

    def __init__(self, url: str, api_key: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.url = url
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def send(self, message: Outgoing) -> str | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        body = {"to": message.to, "text": message.text, "reference": message.idempotency_key}
        headers = {"Authorization": f"Bearer {self._api_key}", "Idempotency-Key": message.idempotency_key}
        try:
            async with self._session.post(self.url, json=body, headers=headers) as response:
                reply = await response.content.read(MAX_GATEWAY_REPLY_BYTES)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SendError(f"gateway {type(exc).__name__}", permanent=False) from exc
        if status >= 300:
            raise SendError(f"gateway {status}", permanent=400 <= status < 500 and status not in (408, 429))
        try:
            reference = json.loads(reply).get("id")
        except (ValueError, AttributeError):
            reference = None
        return str(reference)[:200] if reference is not None else None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
