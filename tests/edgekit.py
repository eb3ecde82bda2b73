"""Helpers to run a real edge (real SQLite file, real aiohttp server on 127.0.0.1)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.app import build_app
from edge.appkeys import STORE
from edge.config import EdgeConfig, build_config
from edge.db import connect, migrate
from edge.keyfile import create_key
from edge.store import EdgeStore, save_program, set_meta
from edge.terminals import create_pairing_code
from protocol import Program, public_bytes, uuid7

DEMO_PROGRAM = Program(brand_id="demo", version=1, name="Demo points", points_per_unit=1, unit_amount=100)


def make_edge_config(
    tmp: Path, *, store_id: str = "store-1", cloud_url: str = "http://127.0.0.1:9", cloud_key: bytes | None = None,
    **extra: Any,
) -> EdgeConfig:
    if cloud_key is None:
        cloud_key = public_bytes(Ed25519PrivateKey.generate().public_key())
    config = build_config(
        {
            "data_dir": str(tmp),
            "store_id": store_id,
            "cloud_url": cloud_url,
            "cloud_public_key": cloud_key.hex(),
            "zeroconf": False,
            "sync_interval": 0.2,
            "default_region": "CA",
            **extra,
        },
        env={},
    )
    tmp.mkdir(parents=True, exist_ok=True)
    if not config.key_path.exists():
        create_key(config.key_path)
    EdgeStore.initialise(config.db_path)
    with_conn(config, lambda c: set_meta(c, "node_id", uuid7(int(time.time() * 1000))), only_if_missing="node_id")
    return config


def with_conn(config: EdgeConfig, fn: Any, only_if_missing: str | None = None) -> Any:
    conn = connect(config.db_path)
    try:
        migrate(conn)
        conn.execute("BEGIN IMMEDIATE")
        if only_if_missing and conn.execute("SELECT 1 FROM meta WHERE key = ?", (only_if_missing,)).fetchone():
            conn.execute("ROLLBACK")
            return None
        result = fn(conn)
        conn.execute("COMMIT")
        return result
    finally:
        conn.close()


def install_program(config: EdgeConfig, program: Program = DEMO_PROGRAM) -> None:
    """As a downlink would: the current program, kept in the history of versions."""
    with_conn(config, lambda c: save_program(c, program))


def set_confirmed(config: EdgeConfig, customer_id: str, points: int, version: int = 1) -> None:
    with_conn(
        config,
        lambda c: c.execute(
            "UPDATE customers SET confirmed = ?, version = ? WHERE customer_id = ?", (points, version, customer_id)
        ),
    )


@dataclass
class Terminal:
    """A paired terminal talking to a running edge over HTTP."""

    session: aiohttp.ClientSession
    base: str
    token: str

    def _headers(self, key: str | None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"}
        headers["Idempotency-Key"] = key or str(uuid.uuid4())
        return headers

    async def call(self, method: str, path: str, body: Any = None, *, key: str | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        all_headers = self._headers(key)
        all_headers.update(headers or {})
        async with self.session.request(method, self.base + path, json=body, headers=all_headers) as response:
            return response.status, await response.json()

    async def enroll(self, name: str, phone: str | None = None, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "consent": {"terms_accepted": True, "channels": ["email"]}}
        if phone:
            body["phone"] = phone
        body.update(extra)
        status, data = await self.call("POST", "/v1/customers", body)
        assert status == 201, data
        return dict(data)

    async def earn(self, customer_id: str, sale_id: str, amount: int) -> tuple[int, Any]:
        return await self.call(
            "POST", "/v1/earns", {"customer_id": customer_id, "sale_id": sale_id, "amount": amount, "state": "paid"}
        )

    async def redeem(self, customer_id: str, sale_id: str, points: int) -> tuple[int, Any]:
        return await self.call(
            "POST", "/v1/redemptions", {"customer_id": customer_id, "sale_id": sale_id, "points": points}
        )


async def pair(session: aiohttp.ClientSession, base: str, config: EdgeConfig, name: str = "Till 1") -> Terminal:
    code = with_conn(config, lambda c: create_pairing_code(c, int(time.time() * 1000)))
    async with session.post(base + "/v1/pair", json={"code": code, "name": name}) as response:
        data = await response.json()
        assert response.status == 201, data
    return Terminal(session, base, data["token"])


@asynccontextmanager
async def running_edge(
    config: EdgeConfig, clock: Callable[[], float] = time.time
) -> AsyncIterator[tuple[web.Application, str]]:
    """The real edge application on 127.0.0.1, on a free port."""
    from edge.app import bind_socket

    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    app = build_app(config, port=port, clock=clock)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    try:
        yield app, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def outbox_count(app: web.Application) -> int:
    count: int = app[STORE].read(lambda c: c.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
    return count
