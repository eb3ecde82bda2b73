"""``loyalty-edge doctor``: check what a node needs, and say what to do about each failure.

Every check is independent (a broken config still lets the disk be
checked) and answers in words a technician can act on.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from protocol import ProtocolError, key_id_for
from protocol.key_messages import decode_key_chain

from .cloud_trust import CloudTrust
from .config import ConfigError, EdgeConfig, load_config
from .health import DISK_FREE_FAILING_BYTES, DISK_FREE_FAILING_RATIO
from .keyfile import KeyFileError, load_key

MAX_CHAIN_BYTES = 256 * 1024
MAX_SKEW_MS = 60_000  # the cloud refuses pulls beyond 5 minutes; warn well before


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def check_clock(cloud_ms: int, local_ms: int) -> Check:
    skew = cloud_ms - local_ms
    if abs(skew) > MAX_SKEW_MS:
        return Check("clock", False, f"this clock is {abs(skew) / 1000:.0f} s {'behind' if skew > 0 else 'ahead of'}"
                     " the cloud's", "turn on time sync (timedatectl set-ntp true) and check the time zone is not "
                     "mistaken for the clock; the cloud refuses pulls more than 5 minutes off")
    return Check("clock", True, f"{skew / 1000:+.1f} s against the cloud")


def check_disk(data_dir: Path, usage: Callable[[Path], tuple[int, int, int]] = shutil.disk_usage) -> Check:
    try:
        total, _, free = usage(data_dir)
    except OSError as exc:
        return Check("disk", False, f"cannot measure {data_dir}: {exc.strerror}", "check the data directory exists")
    if free < DISK_FREE_FAILING_BYTES or free / total < DISK_FREE_FAILING_RATIO:
        return Check("disk", False, f"{free / 1e6:.0f} MB free ({100 * free / total:.1f} %)",
                     f"free space on the disk holding {data_dir} (old logs, package caches); writes fail when full")
    return Check("disk", True, f"{free / 1e9:.1f} GB free ({100 * free / total:.0f} %)")


def check_database(path: Path) -> Check:
    fix = ("stop the edge, keep a copy of the file, and restore the last backup that is not older than the last "
           "acknowledged batch (see README, Operators)")
    if not path.exists():
        return Check("database", False, f"{path} does not exist", "run loyalty-edge init, or check data_dir")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
            applied = conn.execute("SELECT COUNT(*) FROM migrations").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return Check("database", False, f"{path}: {exc}", fix)
    if rows != ["ok"]:
        return Check("database", False, f"integrity_check: {'; '.join(rows[:3])}", fix)
    return Check("database", True, f"integrity ok, {applied} migrations, {path.stat().st_size / 1e6:.1f} MB")


def check_cloud(config: EdgeConfig, now_ms: Callable[[], int]) -> list[Check]:
    url = config.cloud_url.rstrip("/") + "/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            data = json.load(response)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return [Check("cloud", False, f"cannot reach {url}: {reason}",
                      "check the store's internet link, DNS and cloud_url; the edge keeps serving and queues ops")]
    checks = [Check("cloud", True, f"{url} answers")]
    problem = _untrusted_cloud_key(config, str(data.get("key_id")), now_ms())
    if problem is not None:
        checks.append(Check("cloud key", False, problem,
                            "set cloud_public_key to the cloud's key (loyalty-cloud public-key); acks will fail"))
    if isinstance(data.get("time"), int):
        checks.append(check_clock(data["time"], now_ms()))
    return checks


def _untrusted_cloud_key(config: EdgeConfig, key_id: str, now: int) -> str | None:
    """None if the node trusts the key the cloud signs with, or will once it follows the announced chain."""
    from .key_rotation import trusted_and_waiting

    trust = CloudTrust(trusted_and_waiting(config, now)[0])
    if not trust.knows(key_id):
        url = f"{config.cloud_url.rstrip('/')}/v1/cloud-keys?after={quote(trust.newest.key_id, safe='')}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                trust = trust.extend(decode_key_chain(response.read(MAX_CHAIN_BYTES + 1)))[0]
        except (OSError, ProtocolError) as exc:
            return f"the cloud signs with {key_id}, which this node does not trust ({exc})"
    try:
        trust.key(key_id, now)
    except ProtocolError as exc:
        return f"{exc.message}; this node trusts {trust.newest.key_id}"
    return None


def run(config_path: Path, *, now_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> list[Check]:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        return [Check("config", False, str(exc), f"fix {exc.key} in {config_path} (or its LOYALTY_EDGE_ variable)")]
    checks = [Check("config", True, f"{config_path}: store {config.store_id}")]
    try:
        key = load_key(config.key_path)
        checks.append(Check("key", True, f"{config.key_path}: {key_id_for(key.public_key())}"))
    except KeyFileError as exc:
        checks.append(Check("key", False, str(exc), f"chmod 600 {config.key_path} (owner only), or restore the key"))
    checks.append(check_database(config.db_path))
    checks.append(check_disk(config.data_dir))
    checks.extend(check_cloud(config, now_ms))
    return checks


def report(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        lines.append(f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}")
        if not c.ok:
            lines.append(f"     what to do: {c.fix}")
    return "\n".join(lines)
