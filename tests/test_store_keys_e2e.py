"""Store keys end to end, with the real `loyalty-cloud` and `loyalty-edge` processes on loopback:
enrollment by claim token, then serving and syncing; a token that cannot enroll; and an edge key
rotation with a batch cut before it and resent after, the old key refused once its window ends."""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from edge.config import load_config
from protocol import MessageType, decode_batch, key_id_for, open_envelope, private_key_from_seed

from .processkit import BIN, CloudProcess, EdgeProcess, cli, eventually, paired

pytestmark = pytest.mark.slow



@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # no keep-alive: the edge restarts under the terminal in these tests
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        yield session



def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / str(args[0])), *map(str, args[1:])], capture_output=True, text=True,
                          timeout=60, check=False)


def post(url: str, data: bytes) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/x-msgpack"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, {}
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)["error"]


async def test_claim_then_serve_then_sync(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    cloud = CloudProcess(tmp_path)
    cloud.service.start()
    edge: EdgeProcess | None = None
    try:
        token = cloud.claim_token("store-cl")
        edge = EdgeProcess(tmp_path, cloud, "store-cl", claim_token=token)
        assert edge.info["store_id"] == "store-cl" and edge.info["brand_id"] == "acme"
        assert edge.info["cloud_key_version"] == 1 and edge.info["cloud_key_id"].startswith("ed25519:")
        config = load_config(edge.data / "edge.toml")
        assert (config.store_id, config.cloud_public_key) == ("store-cl", cloud.public_key)
        key_file = edge.data / "edge.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        # the cloud holds the public key, and nothing of the private one
        (registered,) = cloud.query("SELECT key_id, public_key FROM store_keys WHERE store_id = 'store-cl'")
        assert registered == (edge.key_id, bytes.fromhex(edge.info["public_key"]))
        assert key_file.read_bytes() not in (cloud.data / "cloud.sqlite3").read_bytes()
        assert edge.query("SELECT version FROM cloud_keys") == [(1,)]

        edge.service.start()
        terminal = await paired(session, edge)
        customer = await terminal.enroll("Claire", phone="+15145550111")
        status, _ = await terminal.earn(customer["customer_id"], "sale-1", 2_500)
        assert status == 201
        await eventually(lambda: cloud.query("SELECT COUNT(*) FROM ops WHERE store_id = 'store-cl'") == [(2,)],
                         what="the edge's ops in the cloud")
        assert cloud.query("SELECT balance FROM customers") == [(25,)]
    finally:
        if edge is not None:
            edge.service.ensure_stopped()
        cloud.service.ensure_stopped()


async def test_a_token_that_cannot_enroll_registers_nothing(tmp_path: Path) -> None:
    cloud = CloudProcess(tmp_path)
    cloud.service.start()
    try:
        token = cloud.claim_token("store-one")
        EdgeProcess(tmp_path, cloud, "store-one", claim_token=token)
        keys_before = cloud.query("SELECT key_id FROM store_keys")
        expiring = cloud.claim_token("store-late", "--token-hours", "0.0003")  # about a second
        await asyncio.sleep(1.5)

        def init(name: str, claim: str, *extra: str) -> subprocess.CompletedProcess[str]:
            return run("loyalty-edge", "init", "--data", tmp_path / name, "--cloud-url", cloud.url,
                       "--claim-token", claim, "--no-zeroconf", *extra)

        reused = init("second-box", token)
        assert reused.returncode == 1 and "claim_token_used" in reused.stderr and "nothing was registered" in \
            reused.stderr
        expired = init("late-box", expiring)
        assert expired.returncode == 1 and "claim_token_expired" in expired.stderr
        unknown = init("typo-box", token[:-3] + "abc")
        assert unknown.returncode == 1 and "unknown_claim_token" in unknown.stderr
        for name in ("second-box", "late-box", "typo-box"):
            assert not (tmp_path / name / "edge.toml").exists()
        assert cloud.query("SELECT key_id FROM store_keys") == keys_before
        assert cloud.query("SELECT used_at FROM claim_tokens t WHERE store_id = 'store-late'") == [(None,)]
        neither = run("loyalty-edge", "init", "--data", tmp_path / "x", "--cloud-url", cloud.url)
        assert neither.returncode == 2 and "--claim-token" in neither.stderr
    finally:
        cloud.service.ensure_stopped()


def stored_batches(edge: EdgeProcess) -> list[tuple[int, bytes, int | None]]:
    return [(seq, bytes(envelope), acked) for seq, envelope, acked in
            edge.query("SELECT seq, envelope, acked_at FROM batches ORDER BY seq")]


def batch_key(envelope: bytes) -> str:
    return decode_batch(open_envelope(envelope, MessageType.BATCH).body).key_id


async def test_rotate_key_with_a_batch_in_flight(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    cloud = CloudProcess(tmp_path)
    cloud.service.start()
    edge = EdgeProcess(tmp_path, cloud, "store-rot", claim_token=cloud.claim_token("store-rot"))
    old_key_id = edge.key_id
    try:
        edge.service.start()
        terminal = await paired(session, edge)
        cid = (await terminal.enroll("Rosa", phone="+15145550122"))["customer_id"]
        await eventually(lambda: cloud.query("SELECT COUNT(*) FROM ops") == [(1,)], what="the enrollment")

        cloud.service.stop()  # the cloud is away: the next batch is cut, stored and not acknowledged
        assert (await terminal.earn(cid, "sale-1", 1_000))[0] == 201
        await eventually(lambda: len(stored_batches(edge)) == 2, what="a batch cut while the cloud is away")
        edge.service.stop()
        (_, in_flight, acked) = stored_batches(edge)[1]
        assert acked is None and batch_key(in_flight) == old_key_id

        old_seed = (edge.data / "edge.key").read_bytes()
        offline = run("loyalty-edge", "rotate-key", "--data", edge.data)  # the cloud still away: nothing switches
        assert offline.returncode == 1 and "the old one stays in use" in offline.stderr
        assert (edge.data / "edge.key").read_bytes() == old_seed
        prepared = key_id_for(private_key_from_seed((edge.data / "edge.key.new").read_bytes()).public_key())

        cloud.service.start()
        rotated = run("loyalty-edge", "rotate-key", "--data", edge.data)
        assert rotated.returncode == 0, rotated.stderr
        answer = json.loads(rotated.stdout)
        new_key_id = answer["key_id"]
        assert new_key_id == prepared  # the retry announced the key the failed attempt made
        assert answer["old_key_id"] == old_key_id and new_key_id != old_key_id and answer["batches_waiting"] == 1
        assert answer["old_key_expires_at"] > time.time() * 1000 + 6 * 24 * 3600 * 1000
        assert not (edge.data / "edge.key.new").exists()
        assert stat.S_IMODE((edge.data / "edge.key").stat().st_mode) == 0o600

        edge.service.start()  # resends the batch cut before, byte for byte, under the old key
        await eventually(lambda: cloud.query("SELECT COUNT(*) FROM ops") == [(2,)], what="the batch in flight")
        (body,) = cloud.query("SELECT body FROM batches WHERE store_id = 'store-rot' AND seq = 2")
        assert body[0] == open_envelope(in_flight, MessageType.BATCH).body
        assert (await terminal.earn(cid, "sale-2", 2_000))[0] == 201
        await eventually(lambda: cloud.query("SELECT COUNT(*) FROM ops") == [(3,)], what="a batch under the new key")
        assert batch_key(stored_batches(edge)[2][1]) == new_key_id
        assert cloud.query("SELECT balance FROM customers") == [(30,)]  # each op once

        # the operator ends the overlap window: the old key is refused, even for its own old batch
        states = cli("loyalty-cloud", "store", "rotate-key", "store-rot", "--finish", "--json", "--data",
                     str(cloud.data))
        assert {json.loads(line)["key_id"]: json.loads(line)["state"] for line in states.splitlines()} == {
            old_key_id: "expired", new_key_id: "active"}
        status, error = post(cloud.url + "/v1/batches", in_flight)
        assert status == 403 and error["code"] == "key_expired"

        # a second rotation while the edge serves: its next batches are signed by the newest key, no restart
        again = run("loyalty-edge", "rotate-key", "--data", edge.data)
        assert again.returncode == 0, again.stderr
        newest = json.loads(again.stdout)["key_id"]
        assert (await terminal.earn(cid, "sale-3", 3_000))[0] == 201
        await eventually(lambda: cloud.query("SELECT COUNT(*) FROM ops") == [(4,)], what="a batch under the newest")
        assert batch_key(stored_batches(edge)[3][1]) == newest
        assert cloud.query("SELECT balance FROM customers") == [(60,)]
    finally:
        edge.service.ensure_stopped()
        cloud.service.ensure_stopped()


async def test_cloud_key_rotation_needs_no_visit_to_the_stores(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    """One edge hears the announcement on a downlink; another is off the whole time and follows the
    chain when it comes back to a cloud already signing with the new key."""
    cloud = CloudProcess(tmp_path)
    cloud.service.start()
    online = EdgeProcess(tmp_path, cloud, "store-on", claim_token=cloud.claim_token("store-on"))
    away = EdgeProcess(tmp_path, cloud, "store-off", claim_token=cloud.claim_token("store-off"))
    try:
        online.service.start()
        rotated = json.loads(cli("loyalty-cloud", "key", "rotate", "--json", "--data", str(cloud.data)))
        await eventually(lambda: online.query("SELECT version FROM cloud_keys ORDER BY seq") == [(1,), (2,)],
                         what="the announcement to reach the online edge")
        (announcement,) = cloud.query("SELECT announcement FROM cloud_keys WHERE version = 2")
        assert online.query("SELECT key_id, announcement FROM cloud_keys WHERE version = 2") == [
            (rotated["key_id"], announcement[0])]

        # the operator switches the service to the new key
        cloud.service.stop()
        (cloud.data / "cloud.key.new").replace(cloud.data / "cloud.key")
        cloud.service.start()
        assert json.loads(cli("loyalty-cloud", "public-key", "--json", "--data", str(cloud.data)))["key_id"] == \
            rotated["key_id"]

        away.service.start()
        for edge, phone in ((online, "+15145550130"), (away, "+15145550131")):
            terminal = await paired(session, edge)
            await terminal.enroll("Otto", phone=phone)
            await eventually(lambda e=edge: e.query("SELECT COUNT(*) FROM outbox WHERE status IS NULL") == [(0,)],
                             what=f"{edge.store_id} to sync under the new cloud key")
        assert away.query("SELECT version, retire_at IS NOT NULL FROM cloud_keys ORDER BY seq") == [(1, True),
                                                                                                   (2, False)]
        assert cloud.query("SELECT COUNT(*) FROM ops") == [(2,)]
    finally:
        online.service.ensure_stopped()
        away.service.ensure_stopped()
        cloud.service.ensure_stopped()
