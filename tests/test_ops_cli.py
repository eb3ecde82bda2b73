"""Operator verbs: the key rotation the README describes, and the technician password."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from edge.technician import PasswordHash
from protocol import MessageType
from protocol.envelope import open_envelope

from .processkit import CloudProcess, EdgeProcess, cli

BIN = Path(sys.executable).parent


def wait_for(predicate: object, seconds: float = 30.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


async def test_key_rotation_as_the_readme_says_loses_and_repeats_nothing(tmp_path: Path) -> None:
    cloud = CloudProcess(tmp_path)
    cloud.service.start()
    edge = EdgeProcess(tmp_path, cloud, "store-rot")
    edge.service.start()
    try:
        wait_for(lambda: bool(edge.query("SELECT 1 FROM meta WHERE key = 'program'")))
        # A fresh connection per request: the edge restarts in the middle.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            async with session.post(f"{edge.url}/v1/pair", json={"code": edge.pairing_code(), "name": "T"}) as r:
                auth = {"Authorization": f"Bearer {(await r.json())['token']}"}

            async def write(key: str, path: str, body: dict[str, object]) -> dict[str, object]:
                async with session.post(f"{edge.url}{path}", json=body,
                                        headers={**auth, "Idempotency-Key": key}) as r:
                    assert r.status == 201, await r.text()
                    return dict(await r.json())

            customer = await write("c", "/v1/customers", {"name": "A", "card_code": "CARD-1",
                                                              "consent": {"terms_accepted": True}})
            cid = customer["customer_id"]
            wait_for(lambda: edge.query("SELECT COUNT(*) FROM outbox WHERE status IS NULL")[0][0] == 0)
            assert cloud.service.stop() == 0  # the next batch, signed by the old key, will wait for its ack
            await write("e1", "/v1/earns", {"customer_id": cid, "sale_id": "s1", "amount": 500, "state": "paid"})
            wait_for(lambda: bool(edge.query("SELECT 1 FROM batches WHERE acked_at IS NULL")))
            assert edge.service.stop() == 0
            cloud.service.start()

            new = json.loads(cli("loyalty-edge", "rotate-key", "--data", str(edge.data)))
            assert new["old_key_id"] == edge.key_id and new["batches_waiting"] == 1
            edge.service.start()  # "systemctl restart loyalty-edge"
            wait_for(lambda: edge.query("SELECT COUNT(*) FROM outbox WHERE status IS NULL")[0][0] == 0)
            states = [json.loads(line) for line in cli("loyalty-cloud", "store", "rotate-key", "store-rot", "--json",
                                                       "--data", str(cloud.data)).splitlines()]
            assert {s["key_id"]: s["state"] for s in states} == {edge.key_id: "retiring", new["key_id"]: "active"}
            await write("e2", "/v1/earns", {"customer_id": cid, "sale_id": "s2", "amount": 300, "state": "paid"})
            wait_for(lambda: edge.query("SELECT COUNT(*) FROM outbox WHERE status IS NULL")[0][0] == 0)
        key_ids = [open_envelope(row[0], MessageType.BATCH).key_id
                   for row in edge.query("SELECT envelope FROM batches ORDER BY seq")]
        # The batch cut before the rotation went out byte for byte under the old key, later ones under the new.
        assert key_ids == [edge.key_id, edge.key_id, new["key_id"]]
        # Every op reached the cloud exactly once, across the restart and the new key.
        assert cloud.query("SELECT COUNT(*) FROM ops WHERE store_id = 'store-rot'")[0][0] == 3
        assert cloud.query("SELECT last_seq FROM stores WHERE store_id = 'store-rot'")[0][0] == 3
    finally:
        edge.service.ensure_stopped()
        cloud.service.ensure_stopped()


def test_technician_password_prints_a_config_line_with_a_usable_hash() -> None:
    out = subprocess.run([str(BIN / "loyalty-edge"), "technician-password"], input="a long password\n",
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    key, _, value = out.stdout.strip().partition(" = ")
    assert key == "technician_password_hash"
    stored = PasswordHash.parse(json.loads(value))
    assert stored.matches("a long password") and not stored.matches("a long passwor")
    short = subprocess.run([str(BIN / "loyalty-edge"), "technician-password"], input="short\n",
                           capture_output=True, text=True, timeout=60, check=False)
    assert short.returncode == 2 and "8 characters" in short.stderr
