"""Helpers for the portal tests: a cloud serving the portal with the file sender,
sign-up links, and a customer's browser session driven over HTTP (forms, the
CSRF field, cookies, the code read from the file sender's mailbox)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from typing import Any

from aiohttp import ClientResponse

from cloud.engagement import Engagement
from cloud.otp import PortalKeys
from cloud.portal import PortalConfig
from cloud.senders import FileSender, Senders
from protocol.signup_link import LinkKind, make_token

from . import cloudkit as k
from .msgkit import mailbox

PORTAL_BASE = "http://portal.test"
SETTINGS = ('{"signup_bonus": 25, "visit": {"points": 2, "min_spend": 500}, "item_points": {"latte": 3},'
            ' "rewards": [{"reward_id": "coffee", "name": "Free coffee", "points": 20, "kind": "free_item",'
            ' "sku": "coffee"}, {"reward_id": "lunch", "name": "Lunch", "points": 300, "kind": "free_item",'
            ' "sku": "lunch"}], "expiry": {"mode": "after_earned", "months": 1}}')


@dataclass
class PortalCloud:
    cloud: k.Cloud
    outbox: Path

    def link(self, *, store: str | None = None, kind: LinkKind = LinkKind.RECEIPT, issued_at: int | None = None,
             key: Any = None) -> str:
        token = make_token(k.BRAND, store, issued_at or k.now_ms(), kind, key or self.cloud.key.private)
        query = f"store={store}&t={token}" if store else f"t={token}"
        return f"/portal/{k.BRAND}?{query}"

    def last_code(self) -> str:
        lines = [line for line in mailbox(self.outbox) if line["kind"] == "one_time_code"]
        match = re.search(r"\b(\d{6})\b", lines[-1]["text"])
        assert match, lines[-1]
        return match.group(1)

    def codes_sent(self) -> int:
        return sum(1 for line in mailbox(self.outbox) if line["kind"] == "one_time_code")


def engagement(outbox: Path, *, dispatch: bool = False) -> Engagement:
    config = PortalConfig(PORTAL_BASE, PortalKeys(b"portal-test-secret-0123456789"), default_region="FR")

    def senders() -> Senders:
        sender = FileSender(outbox)
        return Senders(sender, sender)

    return Engagement(config, senders, dispatch=dispatch, idle_s=0.05)


@asynccontextmanager
async def portal_cloud(tmp_path: Path, backend: k.Backend, *, dispatch: bool = False,
                       clock: k.Clock | None = None) -> AsyncIterator[PortalCloud]:
    outbox = tmp_path / "messages.jsonl"
    async with k.running_cloud(tmp_path, backend, engagement(outbox, dispatch=dispatch), clock=clock) as cloud:
        await cloud.storage.set_program(k.BRAND, "Acme Rewards", 1, 100, k.now_ms(), SETTINGS)
        yield PortalCloud(cloud, outbox)


def field(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no field {name} in {html[:3000]}"
    return unescape(match.group(1))


def element_text(html: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>(.*?)</', html, re.S)
    assert match, f"no #{element_id}"
    return unescape(re.sub(r"<[^>]+>", "", match.group(1)))


@dataclass
class Browser:
    """A customer's browser: one cookie jar, the last page's CSRF field."""

    portal: PortalCloud
    html: str = ""
    status: int = 0

    @property
    def client(self) -> Any:
        return self.portal.cloud.client

    async def _read(self, response: ClientResponse) -> ClientResponse:
        self.status = response.status
        self.html = await response.text()
        return response

    async def get(self, path: str) -> ClientResponse:
        return await self._read(await self.client.get(path))

    async def post(self, path: str, fields: dict[str, str], *, csrf: bool = True,
                   allow_redirects: bool = True) -> ClientResponse:
        data = dict(fields)
        if csrf:
            data.setdefault("csrf", field(self.html, "csrf"))
        return await self._read(await self.client.post(path, data=data, allow_redirects=allow_redirects))

    async def ask_code(self, contact: str, *, signup: bool, name: str = "Hélène", terms: bool = True,
                       messages: bool = True) -> None:
        fields = {"intent": "signup" if signup else "signin", "contact": contact}
        if signup:
            fields.update({"t": field(self.html, "t"), "name": name})
            if terms:
                fields["terms"] = "1"
            if messages:
                fields["messages"] = "1"
        await self.post(f"/portal/{k.BRAND}/code", fields)

    async def enter_code(self, code: str) -> ClientResponse:
        carried = {name: field(self.html, name) for name in ("challenge", "contact", "intent")}
        for name in ("t", "name", "terms", "messages"):
            if f'name="{name}"' in self.html:
                carried[name] = field(self.html, name)
        return await self.post(f"/portal/{k.BRAND}/verify", {**carried, "code": code})

    async def sign_up(self, link: str, contact: str, **kwargs: Any) -> None:
        await self.get(link)
        assert self.status == 200, self.html
        await self.ask_code(contact, signup=True, **kwargs)
        assert self.status == 200, self.html
        await self.enter_code(self.portal.last_code())
        assert self.status == 200 and 'id="balance"' in self.html, self.html

    async def sign_in(self, contact: str) -> None:
        await self.get(f"/portal/{k.BRAND}")
        await self.ask_code(contact, signup=False)
        assert self.status == 200, self.html
        await self.enter_code(self.portal.last_code())


def session_cookie(response: ClientResponse) -> str:
    headers = response.headers.getall("Set-Cookie", [])
    for history in response.history:
        headers += history.headers.getall("Set-Cookie", [])
    (cookie,) = [h for h in headers if h.startswith("lp_session=")]
    return cookie
