"""``loyalty-edge backup`` / ``restore`` with the real edge and cloud processes.

The rule under test (edge/backup.py): a backup may replace the database only
if it is not behind the batch chain, so a restored edge never re-sends a
batch under a used sequence number and never drops an acknowledged op.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from .processkit import CloudProcess, EdgeProcess, cli

BIN = Path(sys.executable).parent


def edge_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "loyalty-edge"), *args], capture_output=True, text=True, timeout=60,
                          check=False)


def wait_for(predicate: Any, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def unsynced(edge: EdgeProcess) -> int:
    return int(edge.query("SELECT COUNT(*) FROM outbox WHERE status IS NULL")[0][0])


def cloud_seq(cloud: CloudProcess, store_id: str) -> int:
    for line in cli("loyalty-cloud", "store", "list", "--json", "--data", str(cloud.data)).splitlines():
        row = json.loads(line)
        if row["store_id"] == store_id:
            return int(row["last_seq"])
    raise AssertionError(store_id)


class Till:
    def __init__(self, session: aiohttp.ClientSession, edge: EdgeProcess) -> None:
        self.session, self.edge, self.auth, self.n = session, edge, {}, 0

    async def pair(self) -> None:
        async with self.session.post(f"{self.edge.url}/v1/pair",
                                     json={"code": self.edge.pairing_code(), "name": "T"}) as r:
            self.auth = {"Authorization": f"Bearer {(await r.json())['token']}"}

    async def write(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.n += 1
        async with self.session.post(f"{self.edge.url}{path}", json=body,
                                     headers={**self.auth, "Idempotency-Key": f"k{self.n}"}) as r:
            assert r.status == 201, await r.text()
            return dict(await r.json())

    async def earn(self, customer_id: str) -> None:
        await self.write("/v1/earns", {"customer_id": customer_id, "sale_id": f"sale-{self.n}", "amount": 400,
                                       "state": "paid"})


async def test_backup_while_serving_and_restore_that_resends_nothing_twice(tmp_path: Path) -> None:
    cloud = CloudProcess(tmp_path)
    cloud.service.start()
    edge = EdgeProcess(tmp_path, cloud, "store-bk")
    edge.service.start()
    backup = tmp_path / "edge-backup.sqlite3"
    try:
        wait_for(lambda: bool(edge.query("SELECT 1 FROM meta WHERE key = 'program'")))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            till = Till(session, edge)
            await till.pair()
            customer = await till.write("/v1/customers", {"name": "B", "card_code": "C-1",
                                                          "consent": {"terms_accepted": True}})
            cid = customer["customer_id"]
            wait_for(lambda: unsynced(edge) == 0)
            assert cloud.service.stop() == 0
            for _ in range(3):
                await till.earn(cid)
            # The batch is cut and stored, waiting for the cloud: the backup holds it unacknowledged.
            wait_for(lambda: bool(edge.query("SELECT 1 FROM batches WHERE acked_at IS NULL")))
            wait_for(lambda: unsynced(edge) == 3 and not edge.query(
                "SELECT 1 FROM outbox WHERE batch_seq IS NULL"))
            made = edge_cli("backup", "--data", str(edge.data), str(backup))
            assert made.returncode == 0, made.stderr
            info = json.loads(made.stdout)
            assert info["last_batch"] == 2 and info["last_acked_batch"] == 1 and info["unsynced_ops"] == 3
            assert stat.S_IMODE(backup.stat().st_mode) == 0o600
            assert edge_cli("backup", "--data", str(edge.data), str(backup)).returncode == 1  # never overwrites

            refused = edge_cli("restore", "--data", str(edge.data), str(backup))
            assert refused.returncode == 1 and "is serving" in refused.stderr

            cloud.service.start()  # batch 2 reaches the cloud and is acknowledged after the backup was taken
            wait_for(lambda: unsynced(edge) == 0)
            assert cloud_seq(cloud, "store-bk") == 2
            assert edge.service.stop() == 0

            # The disk dies: the database is gone. The cloud holds batch 2, the backup ends at batch 2.
            for suffix in ("", "-wal", "-shm"):
                (edge.data / f"edge.sqlite3{suffix}").unlink(missing_ok=True)
            blind = edge_cli("restore", "--data", str(edge.data), str(backup))
            assert blind.returncode == 1 and "--cloud-last-seq" in blind.stderr
            done = edge_cli("restore", "--data", str(edge.data), str(backup), "--cloud-last-seq", "2")
            assert done.returncode == 0, done.stderr
            edge.service.start()
            # Batch 2 is resent byte for byte; the cloud answers its stored ack; nothing is applied twice.
            wait_for(lambda: unsynced(edge) == 0)
            await till.earn(cid)
            wait_for(lambda: unsynced(edge) == 0)
        assert cloud_seq(cloud, "store-bk") == 3
        assert cloud.query("SELECT COUNT(*) FROM ops WHERE store_id = 'store-bk'")[0][0] == 5
        assert edge.query("SELECT COUNT(*) FROM batches WHERE acked_at IS NULL")[0][0] == 0
    finally:
        edge.service.ensure_stopped()
        cloud.service.ensure_stopped()


async def test_restore_refuses_a_backup_behind_the_chain(tmp_path: Path) -> None:
    cloud = CloudProcess(tmp_path)
    cloud.service.start()
    edge = EdgeProcess(tmp_path, cloud, "store-old")
    edge.service.start()
    old = tmp_path / "old.sqlite3"
    try:
        wait_for(lambda: bool(edge.query("SELECT 1 FROM meta WHERE key = 'program'")))
        async with aiohttp.ClientSession() as session:
            till = Till(session, edge)
            await till.pair()
            customer = await till.write("/v1/customers", {"name": "O", "card_code": "C-2",
                                                          "consent": {"terms_accepted": True}})
            wait_for(lambda: unsynced(edge) == 0)
            assert edge_cli("backup", "--data", str(edge.data), str(old)).returncode == 0
            await till.earn(customer["customer_id"])
            wait_for(lambda: unsynced(edge) == 0)
        assert edge.service.stop() == 0
        before = (edge.data / "edge.sqlite3").read_bytes()

        behind = edge_cli("restore", "--data", str(edge.data), str(old))
        assert behind.returncode == 1 and "behind this database" in behind.stderr
        assert (edge.data / "edge.sqlite3").read_bytes() == before  # nothing changed

        (edge.data / "edge.sqlite3").write_bytes(b"not a database" * 100)  # unreadable now
        stale = edge_cli("restore", "--data", str(edge.data), str(old), "--cloud-last-seq",
                         str(cloud_seq(cloud, "store-old")))
        assert stale.returncode == 1 and "the chain would rewind" in stale.stderr
    finally:
        edge.service.ensure_stopped()
        cloud.service.ensure_stopped()


def test_a_second_edge_on_the_same_data_refuses_to_start(tmp_path: Path) -> None:
    cloud = CloudProcess(tmp_path)
    edge = EdgeProcess(tmp_path, cloud, "store-two")
    edge.service.start()
    try:
        second = edge_cli("serve", "--data", str(edge.data))
        assert second.returncode == 1 and "is serving" in second.stderr
    finally:
        edge.service.ensure_stopped()
