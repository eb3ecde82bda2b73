"""The node's verdict (ok / degraded / failing) with reasons in words.

A pure function of a snapshot and ``now``, so the status page, /healthz and
the tests all judge the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OUTBOX_AGE_DEGRADED_S = 15 * 60
OUTBOX_AGE_FAILING_S = 24 * 3600
CLOUD_SILENCE_DEGRADED_S = 5 * 60
# Below either, the next group commit may fail: say so before terminals see 503s.
DISK_FREE_FAILING_BYTES = 100 * 1000 * 1000
DISK_FREE_FAILING_RATIO = 0.02


@dataclass(frozen=True, slots=True)
class Verdict:
    status: str
    reasons: list[str] = field(default_factory=list)


def judge(snapshot: dict[str, Any], now: float) -> Verdict:
    failing: list[str] = []
    degraded: list[str] = []
    if snapshot.get("store_error"):
        failing.append(f"the local database is failing: {snapshot['store_error']}")
    free, total = snapshot.get("disk_free_bytes"), snapshot.get("disk_total_bytes")
    if free is not None and total and (free < DISK_FREE_FAILING_BYTES or free / total < DISK_FREE_FAILING_RATIO):
        failing.append(
            f"disk nearly full: {free / 1e6:.0f} MB free ({100 * free / total:.1f} %); "
            "free space on the data directory's disk, or writes will be refused"
        )
    if snapshot.get("program_version") is None:
        degraded.append("no loyalty program received from the cloud yet: earns are refused")
    outbox = snapshot.get("outbox", {})
    age = float(outbox.get("oldest_age_s", 0.0))
    if age > OUTBOX_AGE_FAILING_S:
        failing.append(f"{outbox.get('depth')} ops have waited more than a day for the cloud")
    elif age > OUTBOX_AGE_DEGRADED_S:
        degraded.append(f"{outbox.get('depth')} ops waiting; the oldest for {int(age // 60)} min")
    sync = snapshot.get("sync", {})
    if sync.get("refused"):  # retrying will not cure it: the store revoked, its key refused
        failing.append(sync["refused"])
    last_ok = sync.get("last_success_at")
    if sync.get("last_error") and not sync.get("refused") and (
            last_ok is None or now - last_ok > CLOUD_SILENCE_DEGRADED_S):
        degraded.append(f"cloud unreachable: {sync['last_error']}")
    if failing:
        return Verdict("failing", failing + degraded)
    if degraded:
        return Verdict("degraded", degraded)
    return Verdict("ok", ["serving terminals; cloud in sync"])
