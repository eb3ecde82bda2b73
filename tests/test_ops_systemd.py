"""systemd units (verify + offline security score) and the edge's notify protocol.

The units are checked by the real ``systemd-analyze``; the notify protocol
through a real AF_UNIX datagram socket, with the real ``loyalty-edge serve``
process laid out as the unit lays it out (config and key as credentials).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.appkeys import STORE
from edge.systemd_notify import Notifier
from protocol import public_bytes

from .edgekit import make_edge_config, running_edge
from .processkit import CloudProcess, Service, free_port

BIN = Path(sys.executable).parent
UNITS = Path(__file__).resolve().parent.parent / "systemd"
UNIT_NAMES = ["loyalty-edge.service", "loyalty-cloud.service", "loyalty-reconcile.service", "loyalty-reconcile.timer"]
SERVICES = [name for name in UNIT_NAMES if name.endswith(".service")]
MAX_EXPOSURE = 2.0


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("systemd-analyze")
    assert binary, "systemd-analyze is missing: .ci/run installs the Debian package systemd"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, check=False)


def unit_root(tmp: Path, *, binaries: bool = True) -> Path:
    """A root directory for ``verify --root``: the host's stock units (for
    sysinit.target and friends), ours, and stand-ins for the installed CLIs
    (verify checks that ExecStart's binary exists and is executable)."""
    root = tmp / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for name in UNIT_NAMES:
        shutil.copy(UNITS / name, root / "etc/systemd/system" / name)
    (root / "usr/local/bin").mkdir(parents=True)
    if binaries:
        for cli in ("loyalty-edge", "loyalty-cloud"):
            path = root / "usr/local/bin" / cli
            path.write_text("#!/bin/sh\nexit 0\n")
            path.chmod(0o755)
    return root


def directives(name: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.mark.parametrize("name", UNIT_NAMES)
def test_unit_passes_systemd_analyze_verify(tmp_path: Path, name: str) -> None:
    root = unit_root(tmp_path)
    out = analyze("verify", f"--root={root}", str(root / "etc/systemd/system" / name))
    # verify reports unknown directives and bad values as warnings on stderr with exit 0: both must be clean.
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr


def test_verify_really_checks_the_exec_binary(tmp_path: Path) -> None:
    root = unit_root(tmp_path, binaries=False)
    out = analyze("verify", f"--root={root}", str(root / "etc/systemd/system/loyalty-edge.service"))
    assert out.returncode != 0 and "/usr/local/bin/loyalty-edge" in out.stderr


@pytest.mark.parametrize("name", SERVICES)
def test_service_exposure_is_at_most_two(name: str) -> None:
    out = analyze("security", "--offline=true", "--no-pager", str(UNITS / name))
    assert out.returncode == 0, out.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout)
    assert match, out.stdout[-2000:]
    assert float(match.group(1)) <= MAX_EXPOSURE, out.stdout


@pytest.mark.parametrize("name", SERVICES)
def test_service_hardening_directives(name: str) -> None:
    d = directives(name)
    assert d["DynamicUser"] == ["yes"] and d["UMask"] == ["0077"] and d["ProtectSystem"] == ["strict"]
    assert d["StateDirectory"] and d["ConfigurationDirectory"]
    assert d["CapabilityBoundingSet"] == [""] and d["NoNewPrivileges"] == ["yes"]
    assert d["SystemCallFilter"][0] == "@system-service"
    families = set(d["RestrictAddressFamilies"][0].split())
    assert families <= {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}


def test_edge_unit_is_notify_with_watchdog_and_credentials() -> None:
    d = directives("loyalty-edge.service")
    assert d["Type"] == ["notify"] and int(d["WatchdogSec"][0]) > 0
    assert set(d["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert "edge.key:/etc/loyalty-edge/edge.key" in d["LoadCredential"]
    assert "LOYALTY_EDGE_KEY_FILE=%d/edge.key" in d["Environment"]
    assert "%d/edge.toml" in d["ExecStart"][0]
    cloud = directives("loyalty-cloud.service")
    assert "cloud.key:/etc/loyalty-cloud/cloud.key" in cloud["LoadCredential"]
    assert "--key-file %d/cloud.key" in cloud["ExecStart"][0]
    assert "loyalty-cloud reconcile --periodic" in directives("loyalty-reconcile.service")["ExecStart"][0]
    assert directives("loyalty-reconcile.timer")["Unit"] == ["loyalty-reconcile.service"]


# ------------------------------------------------------------ notify protocol


def credentials_layout(tmp: Path, port: int) -> tuple[Path, dict[str, str]]:
    """Provision as the README says, then hand config and key over as systemd
    would: copies of mode 0400 in a credentials directory, and the unit's
    environment overrides."""
    etc, state, creds = tmp / "etc", tmp / "state", tmp / "creds"
    cloud_key = public_bytes(Ed25519PrivateKey.generate().public_key()).hex()
    out = subprocess.run(
        [str(BIN / "loyalty-edge"), "init", "--data", str(state), "--config", str(etc / "edge.toml"),
         "--key-file", str(etc / "edge.key"), "--store-id", "store-sd", "--cloud-url", "http://127.0.0.1:9",
         "--cloud-public-key", cloud_key, "--port", str(port), "--interface", "127.0.0.1"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert not (state / "edge.key").exists() and not (state / "edge.toml").exists()
    creds.mkdir(mode=0o700)
    for name in ("edge.toml", "edge.key"):
        shutil.copy(etc / name, creds / name)
        (creds / name).chmod(0o400)
    env = {"LOYALTY_EDGE_KEY_FILE": str(creds / "edge.key"), "LOYALTY_EDGE_DATA_DIR": str(state)}
    return creds, env


def recv_until(sock: socket.socket, wanted: str, deadline: float,
               proc: subprocess.Popen[bytes] | None = None) -> list[str]:
    seen: list[str] = []
    while time.monotonic() < deadline:
        sock.settimeout(min(0.5, max(0.01, deadline - time.monotonic())))
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            assert proc is None or proc.poll() is None, f"the edge exited with {proc.returncode}"
            continue
        seen.append(message)
        if wanted in message.splitlines():
            return seen
    raise AssertionError(f"no {wanted} in {seen}")


def test_real_edge_process_speaks_the_notify_protocol(tmp_path: Path) -> None:
    port = free_port()
    creds, env = credentials_layout(tmp_path, port)
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    log = (tmp_path / "edge.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "loyalty-edge"), "serve", "--config", str(creds / "edge.toml")],
        stdout=subprocess.DEVNULL, stderr=log,
        env={**os.environ, **env, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"},
    )
    try:
        ready = recv_until(sock, "READY=1", time.monotonic() + 30, proc)[-1].splitlines()
        assert f"MAINPID={proc.pid}" in ready
        # At READY the port serves, migrations are recorded and zeroconf is registered.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as response:
            page = response.read().decode()
        assert "advertised as" in page and "store-sd" in page
        conn = sqlite3.connect(f"file:{tmp_path / 'state/edge.sqlite3'}?mode=ro", uri=True)
        assert conn.execute("SELECT COUNT(*) FROM migrations").fetchone()[0] >= 1
        conn.close()
        # The signing key came from the credential: the page shows its fingerprint.
        assert "ed25519:" in page
        # WATCHDOG=1 every 0.2 s (half of WATCHDOG_USEC) while the store answers.
        started = time.monotonic()
        pings = 0
        while pings < 3:
            messages = recv_until(sock, "WATCHDOG=1", started + 5)
            pings += sum(m.splitlines().count("WATCHDOG=1") for m in messages)
        assert time.monotonic() - started < 3
        proc.send_signal(signal.SIGTERM)
        recv_until(sock, "STOPPING=1", time.monotonic() + 10)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        sock.close()
        log.close()


def test_notifier_is_a_no_op_without_notify_socket() -> None:
    notifier = Notifier(env={"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.send("READY=1") is False
    assert notifier.ready("x") is False


def test_notifier_reaches_an_abstract_socket_and_ignores_a_foreign_watchdog() -> None:
    name = f"loyalty-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        notifier = Notifier(env={"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "2000000"})
        assert notifier.watchdog_interval == 1.0
        assert notifier.send("STATUS=hello", "X=1") is True
        assert sock.recv(4096) == b"STATUS=hello\nX=1"
    other = Notifier(env={"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None
    # The listener is gone: sending fails quietly instead of raising.
    assert other.send("READY=1") is False


async def test_watchdog_pings_stop_when_the_store_stops_answering(tmp_path: Path) -> None:
    from edge.app import store_answers

    config = make_edge_config(tmp_path / "edge")
    name = f"loyalty-wd-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    notifier = Notifier(env={"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "100000"})
    async with running_edge(config) as (app, _base):
        task = asyncio.create_task(notifier.watchdog(lambda: store_answers(app)))
        try:
            for _ in range(2):
                assert await asyncio.wait_for(loop.sock_recv(sock, 64), 5) == b"WATCHDOG=1"
            app[STORE].reader.close()  # reads now fail as a broken database would
            await asyncio.sleep(0.15)
            while True:  # drain a ping sent before the close
                try:
                    sock.recv(64)
                except BlockingIOError:
                    break
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(loop.sock_recv(sock, 64), 0.5)
        finally:
            task.cancel()
            sock.close()


# ------------------------------------------------------ cloud as its units run it


def test_cloud_serves_with_the_key_as_a_credential_and_audits_without_it(tmp_path: Path) -> None:
    cloud = CloudProcess(tmp_path)
    creds = tmp_path / "creds"
    creds.mkdir(mode=0o700)
    (cloud.data / "cloud.key").rename(creds / "cloud.key")
    (creds / "cloud.key").chmod(0o400)
    # what loyalty-reconcile.service runs, without the key
    periodic = subprocess.run([str(BIN / "loyalty-cloud"), "reconcile", "--periodic", "--data", str(cloud.data)],
                              capture_output=True, text=True, timeout=60, check=False)
    assert periodic.returncode == 0 and '"audit_chains"' in periodic.stdout, periodic.stderr
    no_key = subprocess.run([str(BIN / "loyalty-cloud"), "serve", "--data", str(cloud.data), "--port", "0"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert no_key.returncode == 2 and "not initialised" in no_key.stderr
    service = Service(cloud.service.argv, tmp_path / "cloud.log",
                      env={"LOYALTY_CLOUD_KEY_FILE": str(creds / "cloud.key")})
    service.start()
    try:
        with urllib.request.urlopen(f"{cloud.url}/v1/public-key", timeout=5) as response:
            assert json.load(response)["public_key"] == cloud.public_key
    finally:
        assert service.stop() == 0
    loose = creds / "cloud.key"
    loose.chmod(0o644)
    refused = subprocess.run(
        [*cloud.service.argv, "--key-file", str(loose)], capture_output=True, text=True, timeout=60, check=False
    )
    assert refused.returncode == 2 and "chmod 600" in refused.stderr
    assert stat.S_IMODE(loose.stat().st_mode) == 0o644
