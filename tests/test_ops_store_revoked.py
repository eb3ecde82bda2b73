"""A store the cloud revoked: the edge's status page (real headless Chromium), /healthz and
``loyalty-edge status`` turn failing and say why, in words. A real cloud process, a real edge."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from aiohttp import web

from edge.app import bind_socket, build_app
from edge.appkeys import STORE, SYNC
from edge.config import EdgeConfig, write_config
from edge.keyfile import load_key
from protocol import public_bytes

from .edgekit import make_edge_config, pair
from .processkit import CloudProcess, cli, free_port
from .test_ops_status_page import NAME, PHONE, assert_no_customer_data, assert_safe_page, render, wait_until

REASON = "till stolen on 3 March; do not reconnect"


@asynccontextmanager
async def edge_on_its_port(config: EdgeConfig) -> AsyncIterator[tuple[web.Application, str]]:
    """The edge app on the port in its config, where ``loyalty-edge status`` looks."""
    sock = bind_socket("127.0.0.1", config.port)
    app = build_app(config, port=config.port)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        yield app, f"http://127.0.0.1:{config.port}"
    finally:
        await runner.cleanup()


async def edge_status(config_path: Path) -> tuple[int, dict[str, object]]:
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("loyalty-edge")), "status", "--config", str(config_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, json.loads(out)


async def test_revoked_store_shows_failing_with_the_reason(tmp_path: Path) -> None:
    cloud = CloudProcess(tmp_path)
    cloud.service.start()
    try:
        config = make_edge_config(tmp_path / "edge", store_id="store-rv", cloud_url=cloud.url,
                                  cloud_key=bytes.fromhex(cloud.public_key), port=free_port())
        config_path = tmp_path / "edge" / "edge.toml"
        write_config(config_path, config)
        cloud.add_store("store-rv", public_bytes(load_key(config.key_path).public_key()).hex())
        async with edge_on_its_port(config) as (app, base), aiohttp.ClientSession() as session:
            await wait_until(lambda: app[STORE].program() is not None, "the program from the cloud")
            code, health = await edge_status(config_path)
            assert code == 0 and health["status"] == "ok"

            cli("loyalty-cloud", "store", "revoke", "store-rv", "--reason", REASON, "--data", str(cloud.data))
            terminal = await pair(session, base, config)
            customer = await terminal.enroll(NAME, PHONE)  # served and queued: the store keeps its promises
            await wait_until(lambda: app[SYNC].status.refused is not None, "the cloud's refusal")

            dom, page = await render(tmp_path, f"{base}/status", "revoked.png")
            assert page.attrs["verdict"]["class"] == "failing" and page.text["verdict-status"] == "FAILING"
            assert f"the cloud revoked this store: {REASON}" in page.text["verdict-reasons"]
            assert "cloud unreachable" not in page.text["verdict-reasons"]  # it answered: it said no
            assert "store_revoked" in page.text["row-last-error"]
            assert page.text["row-cloud-key"].endswith(cloud.key_id)  # pinned by hand: its version unknown
            assert_no_customer_data(dom, customer["customer_id"])
            assert_safe_page(page)

            async with session.get(f"{base}/healthz") as response:
                health = await response.json()
            assert health["status"] == "failing" and any(REASON in r for r in health["reasons"])
            assert REASON in health["sync"]["refused"]
            code, status = await edge_status(config_path)
            assert code == 1 and status["status"] == "failing"
            assert any(f"the cloud revoked this store: {REASON}" in str(r) for r in status["reasons"])  # type: ignore[attr-defined]
            assert cloud.query("SELECT COUNT(*) FROM ops") == [(0,)]
    finally:
        cloud.service.ensure_stopped()
