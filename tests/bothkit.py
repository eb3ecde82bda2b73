"""A real edge (HTTP on 127.0.0.1, its own sync task) syncing with a real cloud
(aiohttp test server, SQLite or PostgreSQL): the terminal's view and the
ledger's, side by side, to check that both compute the same result.

Program versions are set in the cloud and installed on the edge under the
same version number at once (as the next downlink would), so a test can
switch rules between two sales without waiting for a pull.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from edge.appkeys import STORE, SYNC
from edge.config import EdgeConfig
from edge.errors import CloudUnavailable
from edge.keyfile import load_key
from protocol import Program, public_bytes
from protocol.earning import EarningRules
from protocol.sale import Sale

from . import cloudkit
from .edgekit import Terminal, install_program, make_edge_config, pair, running_edge

STORE_ID = "store-rules"


def rules_settings(rules: EarningRules, **extra: Any) -> str:
    """The settings document that gives ``rules`` (the ratio lives in the program itself)."""
    doc: dict[str, Any] = {
        "include_tax": rules.include_tax,
        "visit": {"points": rules.visit_points, "min_spend": rules.visit_min_spend},
        "excluded_skus": list(rules.excluded_skus),
        "item_points": dict(rules.item_points),
        "category_points": dict(rules.category_points),
        "custom_amounts": dict(rules.custom_amounts),
        "zero_groups": list(rules.zero_groups),
        "signup_bonus": rules.signup_bonus,
        "promotions": [
            {"kind": p.kind.value, "bonus": p.bonus, "sku": p.sku, "quantity": p.quantity, "min_spend": p.min_spend,
             "percent": p.percent, "starts_at": p.starts_at, "ends_at": p.ends_at}
            for p in rules.promotions
        ],
        **extra,
    }
    return json.dumps(doc)


def sale_json(sale: Sale, sale_id: str) -> dict[str, Any]:
    """The sale as a terminal sends it, under another id."""
    return {**sale.to_wire(), "sale_id": sale_id}


class _Unreachable:
    async def post_envelope(self, path: str, envelope: bytes) -> bytes:
        raise CloudUnavailable(f"{path}: the link is down")


class FixedClock:
    """The edge's clock: a fixed instant (rules with periods need one), or wall time."""

    def __init__(self, at_ms: int | None = None) -> None:
        self.at_ms = at_ms

    def __call__(self) -> float:
        return time.time() if self.at_ms is None else self.at_ms / 1000


class SyncedEdge:
    """What tests do with an edge's sync task (a class with an ``app`` of a running edge)."""

    app: web.Application

    def unacked(self) -> int:
        count: int = self.app[STORE].read(
            lambda c: c.execute("SELECT COUNT(*) FROM outbox WHERE status IS NULL").fetchone()[0]
        )
        return count

    async def settle(self, limit: float = 30.0) -> None:
        """Wait until every op is acknowledged, then pull what the cloud holds now."""
        deadline = time.monotonic() + limit
        while self.unacked():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.unacked()} ops still unacknowledged: {self.app[SYNC].status}")
            await asyncio.sleep(0.05)
        # A pull of our own (the sync task's may be older than the last ack); a concurrent
        # pull from the same cursor is ignored by the edge, so this cannot apply anything twice.
        await self.app[SYNC].pull()

    @contextmanager
    def offline(self) -> Iterator[None]:
        """The store's internet link is down: every sync attempt fails until the block exits."""
        sync = self.app[SYNC]
        online = sync.client
        sync.client = _Unreachable()
        try:
            yield
        finally:
            sync.client = online


@dataclass
class Both(SyncedEdge):
    cloud: cloudkit.Cloud
    app: web.Application
    terminal: Terminal
    config: EdgeConfig

    async def program(self, name: str, points_per_unit: int, unit_amount: int, settings: str = "{}") -> Program:
        """A new program version in the cloud, installed on the edge as the next downlink would."""
        program = await self.cloud.storage.set_program(
            cloudkit.BRAND, name[:100], points_per_unit, unit_amount, cloudkit.now_ms(), settings
        )
        install_program(self.config, program)
        self.app[STORE].forget_program()
        return program

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return await self.terminal.call(method, path, body)

    async def customer(self, customer_id: str) -> dict[str, Any]:
        status, data = await self.call("GET", f"/v1/customers/{customer_id}")
        assert status == 200, data
        return dict(data)

    async def cloud_balance(self, customer_id: str) -> int:
        rows = await self.cloud.backend.rows(
            self.cloud.db_path, f"SELECT balance FROM customers WHERE customer_id = '{customer_id}'"
        )
        assert len(rows) == 1, f"the cloud has no customer {customer_id}"
        balance: int = rows[0][0]
        return balance


@asynccontextmanager
async def edge_and_cloud(tmp_path: Path, backend: cloudkit.Backend,
                         clock: Callable[[], float] | None = None) -> AsyncIterator[Both]:
    """A cloud on ``backend`` and a paired edge of brand acme syncing with it."""
    async with cloudkit.running_cloud(tmp_path, backend) as cloud:
        if isinstance(clock, FixedClock) and clock.at_ms is not None:
            cloud.clock.offset = clock.at_ms - cloudkit.now_ms()  # both sides agree on the time
        url = str(cloud.client.make_url("/")).rstrip("/")
        config = make_edge_config(tmp_path / "edge", store_id=STORE_ID, cloud_url=url,
                                  cloud_key=public_bytes(cloud.key.public))
        await cloud.storage.add_store(STORE_ID, cloudkit.BRAND, public_bytes(load_key(config.key_path).public_key()),
                                      cloudkit.now_ms())
        program = await cloud.storage.current_program(cloudkit.BRAND)
        assert program is not None
        install_program(config, program)
        async with running_edge(config, clock or time.time) as (app, base), aiohttp.ClientSession() as session:
            yield Both(cloud, app, await pair(session, base, config), config)
