"""`loyalty-cloud portal link` and the serve options, on real processes: a link the
portal accepts, refusals that name the option, and a real `loyalty-cloud serve`
whose portal sends its code and whose dispatcher sends the welcome through a real
SMTP server on 127.0.0.1, with no address or name in its log."""

from __future__ import annotations

import asyncio
import email
import re
import subprocess
import time
from email import policy
from pathlib import Path

import aiohttp

from protocol.signup_link import LinkKind, parse_token

from .msgkit import smtp_server
from .portalkit import field
from .processkit import BIN, CloudProcess


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "loyalty-cloud"), *args], capture_output=True, text=True, timeout=60,
                          check=False, env=env)


def test_portal_link_prints_a_signed_url_and_refuses_unknown_names(tmp_path: Path) -> None:
    cloud = CloudProcess(tmp_path)
    data = str(cloud.data)
    out = run("portal", "link", "acme", "--receipt", "--portal-url", "https://rewards.example.com/", "--data", data)
    assert out.returncode == 0, out.stderr
    url = out.stdout.strip()
    assert url.startswith("https://rewards.example.com/portal/acme?t=")
    link = parse_token(url.split("t=", 1)[1]).link
    assert (link.brand_id, link.store_id, link.kind) == ("acme", None, LinkKind.RECEIPT)
    assert abs(link.issued_at - time.time() * 1000) < 60_000
    flyer = run("portal", "link", "acme", "--data", data).stdout.strip()
    assert flyer.startswith("http://127.0.0.1:8600/portal/acme?t=")
    assert parse_token(flyer.split("t=", 1)[1]).link.kind is LinkKind.FLYER
    for args, field_name in ((("nobrand",), "brand_id"), (("acme", "--store", "nostore"), "store"),
                             (("acme", "--portal-url", "ftp://x"), "portal_url")):
        refused = run("portal", "link", *args, "--data", data)
        assert refused.returncode == 2 and f"({field_name})" in refused.stderr, refused.stderr


def test_serve_refuses_incomplete_sender_settings_naming_the_option(tmp_path: Path) -> None:
    cloud = CloudProcess(tmp_path)
    data = str(cloud.data)
    cases = [
        (("--email-via", "smtp"), "smtp_host"),
        (("--email-via", "smtp", "--smtp-host", "127.0.0.1"), "smtp_from"),
        (("--sms-via", "gateway"), "sms_gateway_url"),
        (("--sms-via", "gateway", "--sms-gateway-url", "http://127.0.0.1:9/sms"), "sms_key_file"),
        (("--portal-region", "XX"), "portal_region"),
        (("--portal-url", "not a url"), "portal_url"),
    ]
    for args, field_name in cases:
        out = run("serve", "--data", data, "--port", "0", *args)
        assert out.returncode == 2 and f"({field_name})" in out.stderr, (args, out.stderr)
    key = tmp_path / "sms.key"
    key.write_text("secret")
    key.chmod(0o644)
    out = run("serve", "--data", data, "--port", "0", "--sms-via", "gateway", "--sms-gateway-url",
              "http://127.0.0.1:9/sms", "--sms-key-file", str(key))
    assert out.returncode == 2 and "chmod 600" in out.stderr


async def test_a_served_portal_sends_the_code_and_the_welcome_over_smtp(tmp_path: Path) -> None:
    cloud = CloudProcess(tmp_path)
    with smtp_server() as (inbox, port):
        cloud.service.argv += ["--email-via", "smtp", "--smtp-host", "127.0.0.1", "--smtp-port", str(port),
                               "--smtp-from", "rewards@acme.example", "--portal-url", cloud.url + "/"]
        cloud.service.start()
        try:
            link = run("portal", "link", "acme", "--receipt", "--portal-url", cloud.url, "--data",
                       str(cloud.data)).stdout.strip()
            jar = aiohttp.CookieJar(unsafe=True)
            async with aiohttp.ClientSession(cookie_jar=jar) as http:
                async with http.get(link) as response:
                    page = await response.text()
                form = {"csrf": field(page, "csrf"), "intent": "signup", "t": field(page, "t"),
                        "name": "Hélène", "contact": "helene@example.org", "terms": "1", "messages": "1"}
                async with http.post(f"{cloud.url}/portal/acme/code", data=form) as response:
                    assert response.status == 200
                    page = await response.text()
                _, rcpts, content = inbox.messages[-1]
                code_mail = email.message_from_bytes(content, policy=policy.default)
                assert rcpts == ["helene@example.org"] and "Your Acme code" in str(code_mail["Subject"])
                body = code_mail.get_body()
                assert body is not None
                match = re.search(r"\b(\d{6})\b", body.get_content())
                assert match
                verify = {name: field(page, name) for name in ("csrf", "challenge", "contact", "intent", "t",
                                                               "name", "terms", "messages")}
                async with http.post(f"{cloud.url}/portal/acme/verify", data={**verify, "code": match.group(1)}) \
                        as response:
                    assert response.status == 200 and "25 points" not in await response.text()
                    assert str(response.url).endswith("/portal/acme/account")
            for _ in range(200):  # the dispatcher sends the welcome within a second or so
                if len(inbox.messages) >= 2:
                    break
                await asyncio.sleep(0.05)
            _, rcpts, content = inbox.messages[1]
            welcome = email.message_from_bytes(content, policy=policy.default)
            assert rcpts == ["helene@example.org"] and str(welcome["Subject"]) == "Welcome to Acme rewards"
            welcome_body = welcome.get_body()
            assert welcome_body is not None and f"{cloud.url}/portal/acme" in welcome_body.get_content()
            for _ in range(100):
                rows = cloud.query("SELECT status, channel, provider_ref FROM messages WHERE kind = 'welcome'")
                if rows and rows[0][0] == "sent":
                    break
                await asyncio.sleep(0.05)
            assert rows == [("sent", "email", str(welcome["Message-ID"]))]
        finally:
            assert cloud.service.stop() == 0
    log = (tmp_path / "cloud.log").read_text()
    assert "helene@example.org" not in log and "Hélène" not in log and match.group(1) not in log
    assert re.search(r"message \d+ \(welcome\) sent via email", log)
