"""Helpers for the message tests: a fake SMS gateway (a real aiohttp server on
127.0.0.1 that honours Idempotency-Key), a real aiosmtpd server, the file
sender's mailbox, and ops that enroll customers with a contact and consent."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from protocol import Consent, Enroll

from . import cloudkit as k

GATEWAY_KEY = "gw-test-key-0123456789"


def enroll_with(customer_id: str, *, email: str | None = None, phone: str | None = None,
                channels: tuple[str, ...] = (), name: str = "Ada") -> Enroll:
    at = k.now_ms()
    return Enroll(op_id=k.new_id(), at=at, terminal_id=k.TERMINAL, customer_id=customer_id, name=name,
                  phone=phone, email=email, card_code=None, consent=Consent(True, channels, "pos", "staff-7", at))


def mailbox(path: Path, *, skip_torn: bool = False) -> list[dict[str, Any]]:
    """The file sender's lines (a line torn by a crash is an error unless ``skip_torn``)."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    if skip_torn:
        lines = [line for line in lines if line.endswith("}")]
    return [json.loads(line) for line in lines]


@dataclass
class FakeGateway:
    """An SMS gateway: answers a script of statuses, then 200; one delivery per Idempotency-Key."""

    script: list[int] = field(default_factory=list)
    delivered: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append({"headers": dict(request.headers), "body": body})
        if request.headers.get("Authorization") != f"Bearer {GATEWAY_KEY}":
            return web.json_response({"error": "unauthorized"}, status=401)
        if self.script:
            return web.json_response({"error": "scripted"}, status=self.script.pop(0))
        key = request.headers["Idempotency-Key"]
        if key not in self.delivered:
            self.delivered[key] = {"id": f"sms-{len(self.delivered) + 1}", **body}
        return web.json_response({"id": self.delivered[key]["id"]})


@asynccontextmanager
async def fake_gateway(gateway: FakeGateway | None = None) -> AsyncIterator[FakeGateway]:
    gateway = gateway or FakeGateway()
    app = web.Application()
    app.router.add_post("/v1/sms", gateway.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    gateway.url = f"http://127.0.0.1:{port}/v1/sms"
    try:
        yield gateway
    finally:
        await runner.cleanup()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class SmtpInbox:
    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)  # recipient -> SMTP reply

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.messages.append((str(envelope.mail_from), list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted for delivery"


@contextmanager
def smtp_server() -> Iterator[tuple[SmtpInbox, int]]:
    """A real aiosmtpd server on 127.0.0.1 (its own thread)."""
    inbox = SmtpInbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()
