"""A minimal W3C WebDriver client over aiohttp, for driving a real headless Chromium
through chromedriver (both on 127.0.0.1): open pages, type into fields, click,
read text and cookies, take a screenshot. Enough to fill the portal's forms the
way a person on a phone does."""

from __future__ import annotations

import asyncio
import base64
import shutil
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from .test_ops_status_page import CHROMIUM_FLAGS

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
PHONE_SIZE = (412, 900)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Browser:
    def __init__(self, http: aiohttp.ClientSession, base: str, session_id: str) -> None:
        self.http = http
        self.base = f"{base}/session/{session_id}"

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, self.base + path, json=body) as response:
            data = await response.json()
        if response.status != 200:
            raise AssertionError(f"webdriver {method} {path}: {data}")
        return data["value"]

    async def open(self, url: str) -> None:
        await self._call("POST", "/url", {"url": url})

    async def find(self, css: str) -> str:
        found = await self._call("POST", "/element", {"using": "css selector", "value": css})
        assert ELEMENT in found, found
        return str(found[ELEMENT])

    async def exists(self, css: str) -> bool:
        return bool(await self._call("POST", "/elements", {"using": "css selector", "value": css}))

    async def type(self, css: str, text: str) -> None:
        element = await self.find(css)
        await self._call("POST", f"/element/{element}/clear", {})
        await self._call("POST", f"/element/{element}/value", {"text": text})

    async def click(self, css: str) -> None:
        await self._call("POST", f"/element/{await self.find(css)}/click", {})

    async def wait_for(self, css: str, seconds: float = 15.0) -> None:
        """Until an element matching ``css`` is on the page (a form's answer has loaded)."""
        for _ in range(int(seconds / 0.05)):
            if await self.exists(css):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {css} on {await self.current_url()}: {(await self.source())[-1500:]}")

    async def text(self, css: str) -> str:
        return str(await self._call("GET", f"/element/{await self.find(css)}/text"))

    async def source(self) -> str:
        return str(await self._call("GET", "/source"))

    async def title(self) -> str:
        return str(await self._call("GET", "/title"))

    async def current_url(self) -> str:
        return str(await self._call("GET", "/url"))

    async def cookies(self) -> list[dict[str, Any]]:
        return list(await self._call("GET", "/cookie"))

    async def screenshot(self, path: Path) -> Path:
        data = base64.b64decode(await self._call("GET", "/screenshot"))
        await asyncio.to_thread(path.write_bytes, data)
        return path


@asynccontextmanager
async def chromium(tmp: Path) -> AsyncIterator[Browser]:
    """Headless Chromium with a phone-sized viewport, driven by chromedriver on 127.0.0.1."""
    driver, binary = shutil.which("chromedriver"), shutil.which("chromium")
    assert driver and binary, "chromium and chromedriver are missing: .ci/run installs chromium and chromium-driver"
    port = _free_port()
    log = (tmp / "chromedriver.log").open("wb")
    proc = await asyncio.create_subprocess_exec(driver, f"--port={port}", "--allowed-ips=127.0.0.1",
                                                stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            for _ in range(200):  # chromedriver takes a moment to listen
                try:
                    async with http.get(f"{base}/status") as response:
                        if (await response.json())["value"]["ready"]:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
            width, height = PHONE_SIZE
            options = {
                "binary": binary,
                "args": [*CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}",
                         f"--window-size={width},{height}"],
                "mobileEmulation": {"deviceMetrics": {"width": width, "height": height, "pixelRatio": 1.0}},
            }
            async with http.post(f"{base}/session", json={
                    "capabilities": {"alwaysMatch": {"goog:chromeOptions": options}}}) as response:
                created = await response.json()
            assert response.status == 200, created
            session_id = created["value"]["sessionId"]
            try:
                yield Browser(http, base, session_id)
            finally:
                async with http.delete(f"{base}/session/{session_id}"):
                    pass
    finally:
        proc.terminate()
        await proc.wait()
        log.close()
