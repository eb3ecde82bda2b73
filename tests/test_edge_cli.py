"""`loyalty-edge` verbs, run as a user would run them."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import public_bytes

from .processkit import Service, free_port

BIN = Path(sys.executable).parent


def edge(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([str(BIN / "loyalty-edge"), *args], capture_output=True, text=True, timeout=60, check=False)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def init_args(data: Path, port: int = 8700, store: str = "store-cli") -> list[str]:
    key = public_bytes(Ed25519PrivateKey.generate().public_key()).hex()
    return ["init", "--data", str(data), "--store-id", store, "--cloud-url", "http://127.0.0.1:9",
            "--cloud-public-key", key, "--port", str(port), "--no-zeroconf"]


def test_init_creates_private_key_config_and_database(tmp_path: Path) -> None:
    data = tmp_path / "edge"
    info = json.loads(edge(*init_args(data)).stdout)
    assert info["key_id"].startswith("ed25519:") and len(bytes.fromhex(info["public_key"])) == 32
    for name in ("edge.key", "edge.toml", "edge.sqlite3"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    again = edge(*init_args(data), check=False)
    assert again.returncode == 2 and "exists" in again.stderr


def test_bad_settings_are_refused_by_name_and_create_nothing(tmp_path: Path) -> None:
    data = tmp_path / "edge"
    out = edge(*init_args(data, store="Bad Store!"), check=False)
    assert out.returncode == 2 and "store_id" in out.stderr
    assert not data.exists()
    bad_key = edge("init", "--data", str(data), "--store-id", "s1", "--cloud-url", "http://x",
                   "--cloud-public-key", "zz", check=False)
    assert bad_key.returncode == 2 and "cloud_public_key" in bad_key.stderr
    edge(*init_args(data))
    config = data / "edge.toml"
    config.write_text(config.read_text() + "colour = \"blue\"\n")
    served = edge("serve", "--data", str(data), check=False)
    assert served.returncode == 2 and "colour" in served.stderr
    (data / "edge.key").chmod(0o644)
    config.write_text(config.read_text().replace("colour = \"blue\"\n", ""))
    served = edge("serve", "--data", str(data), check=False)
    assert served.returncode == 2 and "chmod 600" in served.stderr


def test_environment_overrides_the_config_file(tmp_path: Path) -> None:
    data = tmp_path / "edge"
    edge(*init_args(data))
    out = subprocess.run([str(BIN / "loyalty-edge"), "serve", "--data", str(data)], capture_output=True, text=True,
                         env={**os.environ, "LOYALTY_EDGE_PORT": "not-a-port"}, timeout=30, check=False)
    assert out.returncode == 2 and "port" in out.stderr


def test_pair_terminals_and_status(tmp_path: Path) -> None:
    data = tmp_path / "edge"
    port = free_port()
    edge(*init_args(data, port=port))
    service = Service([str(BIN / "loyalty-edge"), "serve", "--data", str(data)], tmp_path / "edge.log")
    service.start()
    try:
        code = json.loads(edge("pair", "--data", str(data), "--json").stdout)["code"]
        import urllib.request

        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/pair", method="POST",
                                         data=json.dumps({"code": code, "name": "Till 9"}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            terminal_id = json.load(response)["terminal_id"]
        listed = [json.loads(line) for line in edge("terminals", "list", "--data", str(data)).stdout.splitlines()]
        assert [(t["terminal_id"], t["name"], t["revoked_at"]) for t in listed] == [(terminal_id, "Till 9", None)]
        edge("terminals", "revoke", terminal_id, "--data", str(data))
        assert edge("terminals", "revoke", terminal_id, "--data", str(data), check=False).returncode == 1
        status = edge("status", "--data", str(data), check=False)
        report = json.loads(status.stdout)
        assert report["status"] in ("ok", "degraded") and "outbox" in report
        assert status.returncode == (0 if report["status"] == "ok" else 1)
    finally:
        assert service.stop() == 0


def test_discover_finds_nothing_and_says_so(tmp_path: Path) -> None:
    out = edge("discover", "--timeout", "1", "--interface", "127.0.0.1", "--store-id", "nobody-here", check=False)
    assert out.returncode == 1
