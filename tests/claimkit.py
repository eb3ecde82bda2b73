"""Edges of brand acme (real HTTP servers, their own sync tasks) and a real cloud
serving the portal, for the card-link and claim tests; sales as a terminal sends them."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from edge.config import EdgeConfig
from edge.keyfile import load_key
from protocol import public_bytes

from . import cloudkit as k
from .bothkit import SyncedEdge
from .edgekit import Terminal, install_program, make_edge_config, pair, running_edge
from .portalkit import PortalCloud, portal_cloud

#: A Luhn-valid test card number: it must never be stored anywhere.
CARD_NUMBER = "4111111111111111"


class EdgeClock:
    """An edge's clock: wall time plus an offset a test moves (seconds, as the app reads it)."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def __call__(self) -> float:
        return time.time() + self.offset_ms / 1000


def sale(sale_id: str, amount: int = 1000, token: str | None = None, *, sku: str = "coffee") -> dict[str, Any]:
    tender = {"kind": "card", "amount": amount, "card_token": token} if token else {"kind": "cash", "amount": amount}
    return {"sale_id": sale_id, "state": "paid", "tenders": [tender],
            "lines": [{"line_id": "1", "sku": sku, "quantity": 1, "unit_price": amount}]}


@dataclass
class Shop(SyncedEdge):
    store_id: str
    app: web.Application
    terminal: Terminal
    config: EdgeConfig
    clock: EdgeClock

    async def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
        return await self.terminal.call(method, path, body, **kwargs)

    async def enroll(self, name: str, phone: str) -> str:
        return str((await self.terminal.enroll(name, phone))["customer_id"])

    async def earn(self, body: dict[str, Any]) -> dict[str, Any]:
        status, data = await self.call("POST", "/v1/earns", body)
        assert status == 201, data
        return dict(data)

    async def balance(self, customer_id: str) -> dict[str, int]:
        status, data = await self.call("GET", f"/v1/customers/{customer_id}")
        assert status == 200, data
        return dict(data["balance"])

    async def by_card(self, token: str) -> list[dict[str, Any]]:
        status, data = await self.call("GET", f"/v1/customers?card_token={token}")
        assert status == 200, data
        return list(data["customers"])


@asynccontextmanager
async def shops(tmp_path: Path, backend: k.Backend, names: tuple[str, ...] = ("shop-a",),
                clock: k.Clock | None = None) -> AsyncIterator[tuple[PortalCloud, list[Shop]]]:
    """A cloud with the portal and one edge per name, each with a paired terminal."""
    async with portal_cloud(tmp_path, backend, clock=clock) as portal, AsyncExitStack() as stack:
        cloud = portal.cloud
        program = await cloud.storage.set_program(k.BRAND, "Acme Rewards", 1, 100, k.now_ms(),
                                                  '{"visit": {"points": 2, "min_spend": 500}}')
        url = str(cloud.client.make_url("/")).rstrip("/")
        session = await stack.enter_async_context(aiohttp.ClientSession())
        out = []
        for name in names:
            config = make_edge_config(tmp_path / name, store_id=name, cloud_url=url,
                                      cloud_key=public_bytes(cloud.key.public))
            await cloud.storage.add_store(name, k.BRAND, public_bytes(load_key(config.key_path).public_key()),
                                          k.now_ms())
            install_program(config, program)
            edge_clock = EdgeClock()
            app, base = await stack.enter_async_context(running_edge(config, edge_clock))
            out.append(Shop(name, app, await pair(session, base, config), config, edge_clock))
        yield portal, out


def file_has(path: Path, needle: bytes) -> bool:
    """Whether the bytes appear in the file or its WAL (a card number must be in neither)."""
    found = False
    for candidate in (path, path.with_name(path.name + "-wal")):
        if candidate.exists():
            found = found or needle in candidate.read_bytes()
    return found
