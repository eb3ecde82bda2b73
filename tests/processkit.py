"""Real processes on loopback: `loyalty-cloud serve` and `loyalty-edge serve`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .edgekit import Terminal

BIN = Path(sys.executable).parent


async def eventually(check: Callable[[], Awaitable[bool] | bool], limit: float = 40.0, what: str = "") -> None:
    """Poll ``check`` (sync or async) until it is true; fail after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        result = check()
        if await result if isinstance(result, Awaitable) else result:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def paired(session: aiohttp.ClientSession, edge: EdgeProcess, base: str | None = None) -> Terminal:
    """A terminal paired with the real edge process (through ``base``, its URL by default)."""
    base = base or edge.url
    async with session.post(base + "/v1/pair", json={"code": edge.pairing_code(), "name": "till"}) as response:
        data = await response.json()
        assert response.status == 201, data
    return Terminal(session, base, data["token"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli(*args: str) -> str:
    out = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, f"{args}: {out.stderr}"
    return out.stdout


@dataclass
class Service:
    """A server process that prints `listening on URL` when ready."""

    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    def start(self, timeout: float = 30.0) -> None:
        assert self.proc is None or self.proc.poll() is not None
        handle = self.log.open("ab")
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=handle, env={**os.environ, **self.env})
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        os.set_blocking(self.proc.stdout.fileno(), False)
        buffer = b""
        while time.monotonic() < deadline:
            chunk = self.proc.stdout.read() or b""
            buffer += chunk
            if b"listening on" in buffer:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.argv[0]} exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        raise AssertionError(f"{self.argv} did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        return code

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def ensure_stopped(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


class CloudProcess:
    def __init__(self, root: Path) -> None:
        self.data = root / "cloud"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        info = json.loads(cli("loyalty-cloud", "init", "--data", str(self.data), "--json"))
        self.public_key, self.key_id = info["public_key"], info["key_id"]
        cli("loyalty-cloud", "brand", "add", "acme", "--name", "Acme", "--data", str(self.data))
        cli("loyalty-cloud", "program", "set", "acme", "--name", "Acme points", "--points-per-unit", "1",
            "--unit-amount", "100", "--data", str(self.data))
        self.service = Service([str(BIN / "loyalty-cloud"), "serve", "--data", str(self.data), "--port",
                                str(self.port), "--log-level", "INFO"], root / "cloud.log")

    def add_store(self, store_id: str, public_key: str) -> None:
        cli("loyalty-cloud", "store", "add", store_id, "--brand", "acme", "--public-key", public_key,
            "--data", str(self.data))

    def claim_token(self, store_id: str, *extra: str) -> str:
        """A store awaiting its edge, and the one-time token the edge enrolls with."""
        out = cli("loyalty-cloud", "store", "add", store_id, "--brand", "acme", "--json", *extra,
                  "--data", str(self.data))
        return str(json.loads(out)["claim_token"])

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(f"file:{self.data / 'cloud.sqlite3'}?mode=ro", uri=True)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()


class EdgeProcess:
    def __init__(self, root: Path, cloud: CloudProcess, store_id: str, *, zeroconf: bool = False,
                 claim_token: str | None = None) -> None:
        """Provisioned by hand (the cloud registers the printed key), or with a claim token (the edge enrolls)."""
        self.data = root / store_id
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.store_id = store_id
        args = ["loyalty-edge", "init", "--data", str(self.data), "--cloud-url", cloud.url,
                "--cloud-public-key", cloud.public_key, "--port", str(self.port), "--sync-interval", "0.3",
                "--interface", "127.0.0.1"]
        args += ["--store-id", store_id] if claim_token is None else ["--claim-token", claim_token]
        if not zeroconf:
            args.append("--no-zeroconf")
        self.info = json.loads(cli(*args))
        self.key_id = self.info["key_id"]
        if claim_token is None:
            cloud.add_store(store_id, self.info["public_key"])
        self.service = Service([str(BIN / "loyalty-edge"), "serve", "--data", str(self.data)],
                               root / f"{store_id}.log")

    def pairing_code(self) -> str:
        return str(json.loads(cli("loyalty-edge", "pair", "--data", str(self.data), "--json"))["code"])

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(f"file:{self.data / 'edge.sqlite3'}?mode=ro", uri=True)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()
