"""``loyalty-edge doctor`` against a real cloud process and real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.doctor import check_clock, check_disk
from protocol import public_bytes

from .processkit import CloudProcess, EdgeProcess

BIN = Path(sys.executable).parent


def doctor(data: Path, **env: str) -> tuple[int, dict[str, dict[str, object]]]:
    out = subprocess.run([str(BIN / "loyalty-edge"), "doctor", "--data", str(data), "--json"],
                         capture_output=True, text=True, timeout=60, check=False, env={**os.environ, **env})
    assert out.returncode in (0, 1), out.stderr
    return out.returncode, {c["name"]: c for c in json.loads(out.stdout)}


def test_doctor_finds_each_problem_and_says_what_to_do(tmp_path: Path) -> None:
    cloud = CloudProcess(tmp_path)
    cloud.service.start()
    try:
        edge = EdgeProcess(tmp_path, cloud, "store-doc")
        code, checks = doctor(edge.data)
        assert code == 0, checks
        assert set(checks) == {"config", "key", "database", "disk", "cloud", "clock"}
        assert "integrity ok" in str(checks["database"]["detail"])

        other_key = public_bytes(Ed25519PrivateKey.generate().public_key()).hex()
        code, checks = doctor(edge.data, LOYALTY_EDGE_CLOUD_PUBLIC_KEY=other_key)
        assert code == 1 and not checks["cloud key"]["ok"]
        assert "cloud_public_key" in str(checks["cloud key"]["fix"])

        (edge.data / "edge.key").chmod(0o644)
        code, checks = doctor(edge.data)
        assert code == 1 and not checks["key"]["ok"] and "chmod 600" in str(checks["key"]["fix"])
        assert checks["database"]["ok"] and checks["cloud"]["ok"]  # the other checks still run
        (edge.data / "edge.key").chmod(0o600)
    finally:
        cloud.service.ensure_stopped()
    code, checks = doctor(edge.data)
    assert code == 1 and not checks["cloud"]["ok"] and "cannot reach" in str(checks["cloud"]["detail"])
    assert "queues ops" in str(checks["cloud"]["fix"])

    with (edge.data / "edge.sqlite3").open("r+b") as handle:  # a torn page in the middle of the file
        handle.seek(2 * 4096)
        handle.write(os.urandom(4096))
    code, checks = doctor(edge.data)
    assert code == 1 and not checks["database"]["ok"] and "restore" in str(checks["database"]["fix"])

    config = edge.data / "edge.toml"
    config.write_text(config.read_text() + "colour = \"blue\"\n")
    code, checks = doctor(edge.data)
    assert code == 1 and list(checks) == ["config"] and "colour" in str(checks["config"]["detail"])


def test_clock_and_disk_verdicts() -> None:
    now = 1_700_000_000_000
    assert check_clock(now + 500, now).ok
    late = check_clock(now + 120_000, now)
    assert not late.ok and "120 s behind" in late.detail and "set-ntp" in late.fix
    assert not check_clock(now - 120_000, now).ok
    full = check_disk(Path("/"), lambda _p: (10_000_000_000, 9_950_000_000, 50_000_000))
    assert not full.ok and "50 MB free" in full.detail
    assert check_disk(Path("/"), lambda _p: (10_000_000_000, 5_000_000_000, 5_000_000_000)).ok
