"""Time for an edge to push N queued ops to a real cloud process and take every ack."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge import sale_writes, writes
from edge.cloud_client import CloudClient
from edge.db import connect, migrate
from edge.keyfile import create_key
from edge.outbox import Identity
from edge.store import EdgeStore, set_meta
from edge.sync import SyncTask
from protocol import Consent, Earn, Enroll, key_id_for, load_public_key, public_bytes, uuid7
from protocol.earning import Customer

BIN = Path(sys.executable).parent


def _cli(*args: str) -> str:
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, check=True).stdout


def _queue_ops(db: Path, total: int, customers: int) -> None:
    conn = connect(db)
    migrate(conn)
    now = int(time.time() * 1000)
    terminal = uuid7(now)
    conn.execute("BEGIN IMMEDIATE")
    set_meta(conn, "node_id", uuid7(now))
    ids = []
    for n in range(customers):
        op = Enroll(op_id=uuid7(now), at=now, terminal_id=terminal, customer_id=uuid7(now), name=f"Customer {n}",
                    phone=f"+1666{n:07d}", email=None, card_code=None, consent=Consent(True, (), "pos", None, now))
        writes.enroll(op)(conn)
        ids.append(op.customer_id)
    for n in range(total - customers):
        amount = 100 + n % 5000
        op = Earn(op_id=uuid7(now), at=now, terminal_id=terminal, customer_id=ids[n % customers],
                  sale_id=f"sale-{n}", amount=amount, points=amount // 100, program_version=1)
        sale_writes.earn(op, Customer())(conn)
    conn.execute("COMMIT")
    conn.close()


def run_sync_bench(root: Path, total: int, customers: int = 1000, limit_s: float = 300.0) -> dict[str, Any]:
    """Provision a cloud process and an edge database with ``total`` queued ops, then time the push."""
    root.mkdir(parents=True, exist_ok=True)
    cloud_data = root / "cloud"
    cloud_pub = json.loads(_cli("loyalty-cloud", "init", "--data", str(cloud_data), "--json"))["public_key"]
    _cli("loyalty-cloud", "brand", "add", "bench", "--name", "Bench", "--data", str(cloud_data))
    _cli("loyalty-cloud", "program", "set", "bench", "--name", "Bench", "--points-per-unit", "1",
         "--unit-amount", "100", "--data", str(cloud_data))
    key = create_key(root / "edge.key")
    _cli("loyalty-cloud", "store", "add", "bench-store", "--brand", "bench", "--public-key",
         public_bytes(key.public_key()).hex(), "--data", str(cloud_data))
    db = root / "edge.sqlite3"
    started = time.perf_counter()
    _queue_ops(db, total, customers)
    queued_s = time.perf_counter() - started
    proc = subprocess.Popen([str(BIN / "loyalty-cloud"), "serve", "--data", str(cloud_data), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
        result = asyncio.run(_push(db, url, key, load_public_key(bytes.fromhex(cloud_pub)), limit_s))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return {"ops": total, "queue_s": round(queued_s, 1), **result}


async def _push(
    db: Path, url: str, key: Ed25519PrivateKey, cloud_key: Ed25519PublicKey, limit_s: float
) -> dict[str, Any]:
    store = EdgeStore(db)
    await store.open()
    client = CloudClient(url, timeout=60)
    try:
        identity = Identity("bench-store", store.meta("node_id"), key_id_for(key.public_key()), key)
        sync = SyncTask(store, client, identity, cloud_key, batch_size=1000)
        left = -1
        started = time.perf_counter()
        while time.perf_counter() - started < limit_s:
            await sync.push()
            left = store.read(lambda c: c.execute("SELECT COUNT(*) FROM outbox WHERE status IS NULL").fetchone()[0])
            if left == 0:
                break
        seconds = time.perf_counter() - started
        refused = store.read(lambda c: c.execute("SELECT COUNT(*) FROM outbox WHERE status = 'refused'").fetchone()[0])
        return {"seconds": round(seconds, 2), "batches": sync.status.batches_acked, "all_acked": left == 0,
                "refused": refused}
    finally:
        await client.close()
        await store.close()
