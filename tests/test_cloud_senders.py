"""The three senders against real servers on 127.0.0.1: SMTP (aiosmtpd), an SMS
gateway (a fake aiohttp gateway: the one mock, behind the narrow interface) and
the file sender."""

from __future__ import annotations

import asyncio
import email
import stat
from email import policy
from pathlib import Path

import pytest

from cloud.engagement_model import Channel
from cloud.errors import ConfigError
from cloud.messages import idempotency_key
from cloud.secret_files import load_or_create_secret, load_secret
from cloud.senders import FileSender, Outgoing, SendError, SmsGatewaySender, SmtpSender

from .msgkit import GATEWAY_KEY, FakeGateway, fake_gateway, free_port, mailbox, smtp_server


def outgoing(to: str, channel: Channel = Channel.EMAIL, key: str = "welcome:abc") -> Outgoing:
    return Outgoing("message 7", "welcome", channel, to, "Welcome to Acme Coffee rewards",
                    "Hello Hélène, welcome.", idempotency_key(key))


async def test_smtp_delivers_with_a_message_id_that_is_the_same_on_every_try() -> None:
    with smtp_server() as (inbox, port):
        sender = SmtpSender("127.0.0.1", port, "loyalty@acme.example")
        first = await sender.send(outgoing("helene@example.org"))
        again = await sender.send(outgoing("helene@example.org"))
        other = await sender.send(outgoing("helene@example.org", key="welcome:other"))
    assert first == again == f"<{idempotency_key('welcome:abc')}@acme.example>" and other != first
    assert len(inbox.messages) == 3
    mail_from, rcpts, content = inbox.messages[0]
    parsed = email.message_from_bytes(content, policy=policy.default)
    assert (mail_from, rcpts) == ("loyalty@acme.example", ["helene@example.org"])
    assert parsed["Subject"] == "Welcome to Acme Coffee rewards" and parsed["Message-ID"] == first
    body = parsed.get_body()
    assert body is not None and "Hello Hélène, welcome." in body.get_content()


async def test_smtp_refusals_are_permanent_or_temporary_by_code_and_never_quote_the_address() -> None:
    with smtp_server() as (inbox, port):
        inbox.refuse = {"gone@example.org": "550 5.1.1 no such user gone@example.org",
                        "busy@example.org": "451 4.3.0 try later"}
        sender = SmtpSender("127.0.0.1", port, "loyalty@acme.example")
        with pytest.raises(SendError) as gone:
            await sender.send(outgoing("gone@example.org"))
        with pytest.raises(SendError) as busy:
            await sender.send(outgoing("busy@example.org"))
    assert gone.value.permanent and "550" in gone.value.reason and "example.org" not in gone.value.reason
    assert not busy.value.permanent and "451" in busy.value.reason
    closed = SmtpSender("127.0.0.1", free_port(), "loyalty@acme.example", timeout=2)
    with pytest.raises(SendError) as down:
        await closed.send(outgoing("helene@example.org"))
    assert not down.value.permanent and "ConnectionRefusedError" in down.value.reason


async def test_sms_gateway_gets_the_key_and_the_idempotency_key() -> None:
    async with fake_gateway() as gateway:
        sender = SmsGatewaySender(gateway.url, GATEWAY_KEY, timeout=5)
        try:
            message = outgoing("+33611223344", Channel.PHONE)
            assert await sender.send(message) == "sms-1"
            assert await sender.send(message) == "sms-1"  # a resend: the gateway delivers it once
            (request, _) = gateway.requests
            assert request["headers"]["Idempotency-Key"] == message.idempotency_key
            assert request["body"] == {"to": "+33611223344", "text": message.text,
                                       "reference": message.idempotency_key}
            assert len(gateway.delivered) == 1
        finally:
            await sender.close()
        wrong_key = SmsGatewaySender(gateway.url, "not-the-key", timeout=5)
        try:
            with pytest.raises(SendError) as refused:
                await wrong_key.send(outgoing("+33611223344", Channel.PHONE))
            assert refused.value.permanent and refused.value.reason == "gateway 401"
        finally:
            await wrong_key.close()
    gone = SmsGatewaySender(gateway.url, GATEWAY_KEY, timeout=2)  # the server is stopped now
    try:
        with pytest.raises(SendError) as down:
            await gone.send(outgoing("+33611223344", Channel.PHONE))
        assert not down.value.permanent
    finally:
        await gone.close()


@pytest.mark.parametrize(("status", "permanent"), [(400, True), (422, True), (408, False), (429, False),
                                                   (500, False), (503, False)])
async def test_sms_gateway_status_decides_whether_to_try_again(status: int, permanent: bool) -> None:
    async with fake_gateway(FakeGateway(script=[status])) as gateway:
        sender = SmsGatewaySender(gateway.url, GATEWAY_KEY, timeout=5)
        try:
            with pytest.raises(SendError) as info:
                await sender.send(outgoing("+33611223344", Channel.PHONE))
        finally:
            await sender.close()
    assert info.value.permanent is permanent and info.value.reason == f"gateway {status}"


async def test_file_sender_writes_each_key_once_even_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "messages.jsonl"
    sender = FileSender(path)
    await asyncio.gather(*(sender.send(outgoing("a@example.org", key=f"k{n % 3}")) for n in range(9)))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [line["idempotency_key"] for line in mailbox(path)] == [idempotency_key(f"k{n}") for n in range(3)]
    with path.open("a") as fh:
        fh.write('{"torn": ')  # a crash in the middle of a line
    restarted = FileSender(path)
    await restarted.send(outgoing("a@example.org", key="k1"))
    text = path.read_text()
    assert text.count(idempotency_key("k1")) == 1
    await restarted.send(outgoing("a@example.org", key="k9"))
    assert [line["idempotency_key"] for line in mailbox(path, skip_torn=True)][-1] == idempotency_key("k9")
    with pytest.raises(SendError) as info:  # a path under a file: the disk refuses, try again later
        await FileSender(path / "x.jsonl").send(outgoing("a@example.org"))
    assert not info.value.permanent


def test_secret_files_are_0600_and_loose_ones_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "portal.secret"
    made = load_or_create_secret(path, "portal_secret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(made) == 64
    assert load_or_create_secret(path, "portal_secret") == made
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600") as info:
        load_secret(path, "portal_secret")
    assert info.value.field == "portal_secret"
    with pytest.raises(ConfigError, match="cannot open"):
        load_secret(tmp_path / "missing", "sms_key_file")
