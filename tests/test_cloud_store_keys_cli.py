"""``loyalty-cloud store`` (add with a claim token, token, revoke, rotate-key) and ``key`` (rotate, status),
a real process per command, on each ledger backend."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import pytest

from cloud.keys import load_key
from cloud.store_keys_model import hash_claim_token
from protocol.key_messages import open_cloud_key

from . import cloudkit as k
from .test_cloud_cli import cli, ledger  # noqa: F401 (the fixture that points every command at the backend)

HOUR_MS = 3600 * 1000


@pytest.fixture
def cloud_data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    cli("init", "--data", data)
    cli("brand", "add", "acme", "--name", "Acme Coffee", "--data", data)
    return data


def lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_store_add_makes_a_claim_token_then_token_and_revoke(cloud_data: Path, ledger: k.Backend) -> None:  # noqa: F811
    db = cloud_data / "cloud.sqlite3"
    added = json.loads(cli("store", "add", "store-c", "--brand", "acme", "--json", "--data", cloud_data).stdout)
    token = str(added["claim_token"])
    assert token.startswith("lck_") and len(token) > 40
    assert 71 * HOUR_MS < int(str(added["expires_at"])) - k.now_ms() <= 72 * HOUR_MS
    # the ledger keeps the token's hash only
    assert ledger.rows_sync(db, "SELECT token_hash, used_at FROM claim_tokens") == [(hash_claim_token(token), None)]
    assert token not in repr(ledger.snapshot_sync(db))
    text = cli("store", "add", "store-d", "--brand", "acme", "--token-hours", "2", "--data", cloud_data).stdout
    assert "shown once" in text and "--claim-token lck_" in text
    listed = cli("store", "list", "--data", cloud_data).stdout
    assert "store-c\tacme\tseq=0\tawaiting its edge's claim" in listed

    before = ledger.snapshot_sync(db)
    for bad in (("store", "add", "store-c", "--brand", "acme"),  # exists
                ("store", "add", "store-e", "--brand", "nobody"),
                ("store", "add", "store-e", "--brand", "acme", "--token-hours", "0"),
                ("store", "token", "store-zz"),
                ("store", "revoke", "store-c", "--reason", " "),
                ("store", "revoke", "store-zz", "--reason", "gone")):
        cli(*bad, "--data", cloud_data, expect=2)
    assert ledger.snapshot_sync(db) == before

    again = json.loads(cli("store", "token", "store-c", "--json", "--data", cloud_data).stdout)
    assert again["claim_token"] != token and again["brand_id"] == "acme"
    assert ledger.rows_sync(db, "SELECT token_hash FROM claim_tokens WHERE store_id = 'store-c'") == [
        (hash_claim_token(str(again["claim_token"])),)]  # the first token is gone

    out = cli("store", "revoke", "store-c", "--reason", "box returned to the vendor", "--data", cloud_data).stdout
    assert "revoked" in out and "box returned to the vendor" in out
    listed_json = lines(cli("store", "list", "--json", "--data", cloud_data).stdout)
    (row,) = [r for r in listed_json if r["store_id"] == "store-c"]
    assert row["revoke_reason"] == "box returned to the vendor" and row["revoked_at"]
    assert ledger.rows_sync(db, "SELECT COUNT(*) FROM claim_tokens WHERE store_id = 'store-c'") == [(0,)]
    proc = cli("store", "token", "store-c", "--data", cloud_data, expect=2)
    assert "revoked" in proc.stderr


def test_store_rotate_key_shows_and_forces_the_window(cloud_data: Path, ledger: k.Backend) -> None:  # noqa: F811
    signer, successor = k.StoreSigner("store-a"), k.StoreSigner("store-a")
    cli("store", "add", "store-a", "--brand", "acme", "--public-key", signer.public_raw.hex(), "--data", cloud_data)
    (only,) = lines(cli("store", "rotate-key", "store-a", "--json", "--data", cloud_data).stdout)
    assert (only["key_id"], only["state"]) == (signer.key_id, "active")
    proc = cli("store", "token", "store-a", "--data", cloud_data, expect=2)
    assert "enrolled" in proc.stderr  # a live key: the store rotates from its edge instead

    async def rotate() -> None:
        storage = ledger.storage(cloud_data)
        await storage.open(k.now_ms())
        try:
            now = k.now_ms()
            await storage.rotate_store_key("store-a", signer.key_id, successor.public_raw, now + 7 * 24 * HOUR_MS, now)
        finally:
            await storage.close()

    asyncio.run(rotate())
    states = {r["key_id"]: r["state"] for r in lines(cli("store", "rotate-key", "store-a", "--json", "--data",
                                                         cloud_data).stdout)}
    assert states == {signer.key_id: "retiring", successor.key_id: "active"}
    text = cli("store", "rotate-key", "store-a", "--data", cloud_data).stdout
    assert f"{signer.key_id}\tretiring until" in text and f"replaced by {successor.key_id}" in text
    finished = lines(cli("store", "rotate-key", "store-a", "--finish", "--json", "--data", cloud_data).stdout)
    assert {r["key_id"]: r["state"] for r in finished} == {signer.key_id: "expired", successor.key_id: "active"}
    reopened = lines(cli("store", "rotate-key", "store-a", "--overlap-hours", "1", "--json", "--data",
                         cloud_data).stdout)
    (old,) = [r for r in reopened if r["key_id"] == signer.key_id]
    assert old["state"] == "retiring" and 0 < int(str(old["expires_at"])) - k.now_ms() <= HOUR_MS
    cli("store", "rotate-key", "store-zz", "--data", cloud_data, expect=2)
    cli("store", "rotate-key", "store-a", "--finish", "--overlap-hours", "1", "--data", cloud_data, expect=2)


def test_key_rotate_announces_the_next_cloud_key(cloud_data: Path, ledger: k.Backend) -> None:  # noqa: F811
    first = json.loads(cli("public-key", "--json", "--data", cloud_data).stdout)
    (v1,) = lines(cli("key", "status", "--json", "--data", cloud_data).stdout)  # init registered version 1
    assert (v1["version"], v1["key_id"], v1["announcement"]) == (1, first["key_id"], None)

    rotated = json.loads(cli("key", "rotate", "--overlap-hours", "48", "--json", "--data", cloud_data).stdout)
    new_file = Path(str(rotated["key_file"]))
    assert new_file == cloud_data / "cloud.key.new" and stat.S_IMODE(new_file.stat().st_mode) == 0o600
    assert rotated["version"] == 2 and rotated["overlap_ms"] == 48 * HOUR_MS
    v1, v2 = lines(cli("key", "status", "--json", "--data", cloud_data).stdout)
    announcement = open_cloud_key(bytes.fromhex(str(v2["announcement"])), load_key(cloud_data / "cloud.key").public)
    assert (announcement.version, announcement.key_id) == (2, rotated["key_id"])
    assert announcement.previous_key_id == first["key_id"]
    assert "(newest)" in cli("key", "status", "--data", cloud_data).stdout.splitlines()[1]

    before = ledger.snapshot_sync(cloud_data / "cloud.sqlite3")
    proc = cli("key", "rotate", "--data", cloud_data, "--new-key-file", cloud_data / "third.key", expect=2)
    assert "newest" in proc.stderr  # version 1's file cannot name version 3
    assert ledger.snapshot_sync(cloud_data / "cloud.sqlite3") == before
    third = json.loads(cli("key", "rotate", "--key-file", new_file, "--new-key-file", cloud_data / "third.key",
                           "--json", "--data", cloud_data).stdout)
    assert third["version"] == 3
