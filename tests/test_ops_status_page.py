"""The technician's status page, rendered by a real headless Chromium.

Three states, each with DOM checks and a phone-sized screenshot saved in the
test's tmp dir: healthy (a real cloud process, in sync), the cloud away for
a while with a growing outbox (degraded), and a nearly full disk (failing;
the disk numbers are injected, the rest is real). Access rules for the LAN
are checked on the technician gate itself: tests talk to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from edge.app import bind_socket, build_app
from edge.appkeys import STORE, SYNC
from edge.config import ConfigError, EdgeConfig
from edge.health import judge
from edge.history import HISTORY
from edge.keyfile import load_key
from edge.status_page import DISK_USAGE
from edge.technician import TechnicianGate, hash_password
from protocol import public_bytes

from .edgekit import install_program, make_edge_config, pair
from .processkit import CloudProcess

PHONE = "+33698765432"
NAME = "Hélène Marchetti"
EMAIL = "helene.marchetti@example.org"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                  "--no-first-run", "--disable-component-update", "--disable-sync"]


class Clock:
    """Wall time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@asynccontextmanager
async def edge_server(
    config: EdgeConfig, clock: Callable[[], float] = time.time,
    disk_usage: Callable[[Path], tuple[int, int, int]] | None = None,
) -> AsyncIterator[tuple[web.Application, str]]:
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    app = build_app(config, port=port, clock=clock)
    if disk_usage is not None:
        app[DISK_USAGE] = disk_usage
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        yield app, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def chromium(tmp: Path, *args: str) -> str:
    binary = shutil.which("chromium")
    assert binary, "chromium is missing: .ci/run installs the Debian package chromium"
    proc = await asyncio.create_subprocess_exec(
        binary, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()[-2000:]
    return out.decode()


class ById(HTMLParser):
    """Text content of every element that has an id, plus every tag seen."""

    def __init__(self) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.attrs: dict[str, dict[str, str | None]] = {}
        self.tags: set[str] = set()
        self._open: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        element_id = dict(attrs).get("id")
        if element_id:
            self.text[element_id] = ""
            self.attrs[element_id] = dict(attrs)
        if tag not in ("meta", "br", "link", "img", "input", "rect", "polyline"):
            self._open.append((tag, element_id))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            open_tag, _ = self._open.pop()
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, element_id in self._open:
            if element_id:
                self.text[element_id] += data


async def render(tmp: Path, url: str, shot: str) -> tuple[str, ById]:
    dom = await chromium(tmp, "--dump-dom", url)
    png = tmp / shot
    await chromium(tmp, f"--screenshot={png}", "--window-size=412,900", url)
    check_screenshot(png)
    parsed = ById()
    parsed.feed(dom)
    return dom, parsed


def check_screenshot(path: Path) -> None:
    """A real phone-sized picture with content, not a blank or error page."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert (width, height) == (412, 900) and depth == 8
    idat, pos = b"", 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = 1 + width * {2: 3, 6: 4}[colour]
    rows = {raw[i:i + stride] for i in range(0, len(raw), stride)}
    assert len(rows) > 100, f"only {len(rows)} distinct rows: the page looks blank"


def assert_no_customer_data(dom: str, *secrets: str) -> None:
    for secret in (PHONE, PHONE[3:], NAME, "Marchetti", EMAIL, *secrets):
        assert secret not in dom, secret


def assert_safe_page(parsed: ById) -> None:
    assert not parsed.tags & {"script", "form", "iframe", "img", "link", "input"}


async def wait_until(predicate: Callable[[], Any], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# ------------------------------------------------------------------ states


async def test_healthy_node_in_sync_with_a_real_cloud(tmp_path: Path) -> None:
    cloud = CloudProcess(tmp_path)
    cloud.service.start()
    try:
        config = make_edge_config(tmp_path / "edge", store_id="store-ok", cloud_url=cloud.url,
                                  cloud_key=bytes.fromhex(cloud.public_key))
        cloud.add_store("store-ok", public_bytes(load_key(config.key_path).public_key()).hex())
        async with edge_server(config) as (app, base), aiohttp.ClientSession() as session:
            await wait_until(lambda: app[STORE].program() is not None, "the program from the cloud")
            terminal = await pair(session, base, config, name="Till 1")
            customer = await terminal.enroll(NAME, PHONE, email=EMAIL)
            status, _ = await terminal.earn(customer["customer_id"], "sale-1", 2500)
            assert status == 201
            await wait_until(lambda: app[STORE].outbox_summary(0)["depth"] == 0, "the outbox to drain")
            await wait_until(lambda: app[SYNC].status.clock_skew_ms is not None, "an ack")
            now = time.time()
            for minute, ops in enumerate((3, 0, 5, 2)):  # the chart's last minutes
                app[HISTORY].record(now - 240 + 60 * minute, 10 + ops * (minute + 1), float(minute))

            dom, page = await render(tmp_path, f"{base}/status", "healthy.png")
            assert page.attrs["verdict"]["class"] == "ok"
            assert page.text["verdict-status"] == "OK"
            assert "cloud in sync" in page.text["verdict-reasons"]
            facts = page.text
            assert "reachable" in facts["row-cloud"] and "unreachable" not in facts["row-cloud"]
            assert facts["row-outbox-depth"].endswith("0") and "none waiting" in facts["row-outbox-age"]
            assert "s ago" in facts["row-last-sync"]
            assert facts["row-store"].endswith("store-ok") and "ed25519:" in facts["row-key"]
            assert facts["row-program"].endswith("1") and facts["row-conflicts"].endswith("0")
            assert facts["row-clock-skew"].rstrip().endswith(" s")
            assert "Till 1" in facts["terminals"] and "active" in facts["terminals"]
            assert "not advertised" in facts["row-zeroconf"]  # zeroconf off in this config
            assert "chart-ops" in page.attrs and "chart-lag_s" in page.attrs
            assert dom.count("<polyline") == 2
            assert_no_customer_data(dom, customer["customer_id"])
            assert_safe_page(page)
    finally:
        cloud.service.ensure_stopped()


async def test_cloud_away_for_a_while_with_a_growing_outbox_is_degraded(tmp_path: Path) -> None:
    config = make_edge_config(tmp_path / "edge", store_id="store-away")  # its cloud URL answers nothing
    install_program(config)
    clock = Clock()
    async with edge_server(config, clock=clock) as (app, base), aiohttp.ClientSession() as session:
        terminal = await pair(session, base, config, name="Till 2")
        customer = await terminal.enroll(NAME, PHONE, email=EMAIL)
        for sale in range(3):
            assert (await terminal.earn(customer["customer_id"], f"s{sale}", 1000))[0] == 201
        clock.offset = 20 * 60  # twenty minutes later, the cloud still away
        await wait_until(lambda: app[SYNC].status.last_error is not None, "a failed sync")

        dom, page = await render(tmp_path, f"{base}/status", "cloud-away.png")
        assert page.attrs["verdict"]["class"] == "degraded" and page.text["verdict-status"] == "DEGRADED"
        reasons = page.text["verdict-reasons"]
        assert "cloud unreachable" in reasons and "4 ops waiting; the oldest for 20 min" in reasons
        assert "unreachable" in page.text["row-cloud"] and "CloudUnavailable" in page.text["row-last-error"]
        assert page.text["row-outbox-depth"].endswith("4") and "20 min" in page.text["row-outbox-age"]
        assert "in " in page.text["row-next-retry"] and "never" in page.text["row-last-sync"]
        assert_no_customer_data(dom, customer["customer_id"])

        for sale in range(3, 6):  # the queue keeps growing while the cloud is away
            assert (await terminal.earn(customer["customer_id"], f"s{sale}", 1000))[0] == 201
        _, again = await render(tmp_path, f"{base}/status", "cloud-away-later.png")
        assert again.text["row-outbox-depth"].endswith("7")
        assert again.attrs["verdict"]["class"] == "degraded"


async def test_nearly_full_disk_is_failing(tmp_path: Path) -> None:
    config = make_edge_config(tmp_path / "edge", store_id="store-full")
    install_program(config)
    total, free = 10_000_000_000, 50_000_000

    def disk_usage(path: Path) -> tuple[int, int, int]:
        assert path == config.data_dir
        return total, total - free, free

    async with edge_server(config, disk_usage=disk_usage) as (_app, base), aiohttp.ClientSession() as session:
        terminal = await pair(session, base, config)
        customer = await terminal.enroll(NAME, PHONE, email=EMAIL)
        dom, page = await render(tmp_path, f"{base}/status", "disk-full.png")
        assert page.attrs["verdict"]["class"] == "failing" and page.text["verdict-status"] == "FAILING"
        assert "disk nearly full: 50 MB free (0.5 %)" in page.text["verdict-reasons"]
        assert page.text["row-disk-free"].endswith("50.0 MB (0.5 %)")
        assert_no_customer_data(dom, customer["customer_id"])
        async with session.get(f"{base}/healthz") as response:
            health = await response.json()
        assert health["status"] == "failing" and any("disk nearly full" in r for r in health["reasons"])
        async with session.get(f"{base}/status") as response:
            csp = response.headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "script-src" not in csp


# ------------------------------------------------------------- judge + access


def test_disk_thresholds_by_bytes_and_by_ratio() -> None:
    base: dict[str, Any] = {"program_version": 1, "outbox": {}, "sync": {}}
    gb = 1_000_000_000
    assert judge({**base, "disk_free_bytes": 99_000_000, "disk_total_bytes": 1000 * gb}, 0).status == "failing"
    assert judge({**base, "disk_free_bytes": 19 * gb, "disk_total_bytes": 1000 * gb}, 0).status == "failing"
    assert judge({**base, "disk_free_bytes": 21 * gb, "disk_total_bytes": 1000 * gb}, 0).status == "ok"
    assert judge({**base, "disk_free_bytes": 101_000_000, "disk_total_bytes": 2 * gb}, 0).status == "ok"


def basic(password: str, user: str = "tech") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_lan_access_needs_the_technician_password() -> None:
    lan = "192.168.1.20"
    assert await TechnicianGate(None).check("127.0.0.1", None) == "ok"
    assert await TechnicianGate(None).check("::1", None) == "ok"
    assert await TechnicianGate(None).check(lan, basic("anything-at-all")) == "local_only"
    now = [1000.0]
    gate = TechnicianGate(hash_password("correct horse"), clock=lambda: now[0])
    assert await gate.check("127.0.0.1", None) == "ok"
    assert await gate.check(lan, None) == "login"
    assert await gate.check(lan, "Bearer x") == "login"
    assert await gate.check(lan, basic("wrong horse")) == "login"
    assert await gate.check(lan, basic("correct horse")) == "ok"
    assert await gate.check(lan, basic("correct horse", user="other")) == "ok"
    for _ in range(9):  # ten wrong guesses in a minute close the door for a while, even to the right one
        assert await gate.check(lan, basic("guess")) == "login"
    assert await gate.check(lan, basic("correct horse", user="someone")) == "slow_down"
    assert await gate.check(lan, basic("correct horse")) == "ok"  # a header already proven stays good
    now[0] += 61
    assert await gate.check(lan, basic("correct horse", user="someone")) == "ok"


async def test_password_set_page_stays_open_on_localhost_and_bad_hash_is_a_config_error(tmp_path: Path) -> None:
    config = make_edge_config(tmp_path / "edge", technician_password_hash=hash_password("s3cret-pass"))
    async with edge_server(config) as (_app, base), aiohttp.ClientSession() as session:
        async with session.get(f"{base}/status") as response:
            assert response.status == 200 and "Loyalty edge" in await response.text()
    with pytest.raises(ConfigError) as info:
        make_edge_config(tmp_path / "other", technician_password_hash="plaintext-password")
    assert info.value.key == "technician_password_hash"
    with pytest.raises(ValueError, match="8 characters"):
        hash_password("short")
