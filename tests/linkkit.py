"""An edge and a real cloud joined in one process by a link that can fail.

Like h11's ConnectionPair: the edge's sync task talks to a real cloud server
on 127.0.0.1 through ``Link``, which can drop a request, lose the reply after
the cloud applied it, duplicate a request, delay it, or replay an older one
first (reordering). Randomness is seeded so a failure can be replayed.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge import sale_writes, writes
from edge.cloud_client import CloudClient
from edge.errors import CloudRefused, CloudUnavailable
from edge.keyfile import load_key
from edge.outbox import Identity
from edge.store import EdgeStore
from edge.sync import SyncTask
from protocol import Consent, Earn, Enroll, Redeem, earn_points, key_id_for, public_bytes, uuid7
from protocol.earning import Customer as RulesCustomer

from . import cloudkit
from .edgekit import DEMO_PROGRAM, install_program, make_edge_config


@dataclass
class Link:
    base_url: str
    rng: random.Random
    drop_request: float = 0.0
    drop_reply: float = 0.0
    duplicate: float = 0.0
    replay_old: float = 0.0
    max_delay: float = 0.0
    up: bool = True
    seen: list[tuple[str, bytes]] = field(default_factory=list)
    delivered: int = 0
    faults: int = 0

    def __post_init__(self) -> None:
        self.client = CloudClient(self.base_url, timeout=10)

    def heal(self) -> None:
        self.drop_request = self.drop_reply = self.duplicate = self.replay_old = self.max_delay = 0.0
        self.up = True

    async def post_envelope(self, path: str, envelope: bytes) -> bytes:
        if not self.up or self.rng.random() < self.drop_request:
            self.faults += 1
            raise CloudUnavailable("link: request dropped")
        if self.seen and self.rng.random() < self.replay_old:
            self.faults += 1
            old_path, old = self.rng.choice(self.seen)
            try:  # an old message arrives late; the cloud must shrug it off
                await self.client.post_envelope(old_path, old)
            except (CloudRefused, CloudUnavailable):
                pass
        if self.max_delay:
            await asyncio.sleep(self.rng.uniform(0, self.max_delay))
        reply = await self.client.post_envelope(path, envelope)
        self.delivered += 1
        if self.rng.random() < self.duplicate:
            self.faults += 1
            again = await self.client.post_envelope(path, envelope)
            if path == "/v1/batches":
                assert again == reply, "a resent batch must get the byte-identical ack"
        self.seen.append((path, envelope))
        if self.rng.random() < self.drop_reply:
            self.faults += 1
            raise CloudUnavailable("link: reply lost")
        return reply

    async def get_bytes(self, path: str) -> bytes:
        if not self.up:
            raise CloudUnavailable("link: down")
        return await self.client.get_bytes(path)

    async def close(self) -> None:
        await self.client.close()


@dataclass
class LinkedEdge:
    store_id: str
    store: EdgeStore
    sync: SyncTask
    link: Link
    terminal_id: str

    def now(self) -> int:
        return int(time.time() * 1000)

    async def enroll(self, name: str, phone: str) -> str:
        now = self.now()
        op = Enroll(op_id=uuid7(now), at=now, terminal_id=self.terminal_id, customer_id=uuid7(now), name=name,
                    phone=phone, email=None, card_code=None, consent=Consent(True, (), "pos", None, now))
        await self._write(op.op_id, writes.enroll(op))
        return op.customer_id

    async def earn(self, customer_id: str, sale_id: str, amount: int) -> Any:
        now = self.now()
        op = Earn(op_id=uuid7(now), at=now, terminal_id=self.terminal_id, customer_id=customer_id, sale_id=sale_id,
                  amount=amount, points=earn_points(amount, DEMO_PROGRAM), program_version=1)
        return await self._write(op.op_id, sale_writes.earn(op, RulesCustomer()))

    async def redeem(self, customer_id: str, sale_id: str, points: int) -> Any:
        now = self.now()
        op = Redeem(op_id=uuid7(now), at=now, terminal_id=self.terminal_id, customer_id=customer_id,
                    sale_id=sale_id, points=points, program_version=1)
        return await self._write(op.op_id, sale_writes.redeem(op, "points"))

    async def _write(self, key: str, action: writes.Action) -> Any:
        status, body, _ = await self.store.write(writes.idempotent(self.terminal_id, key, b"h", self.now(), action))
        return status, body

    def balance(self, customer_id: str) -> dict[str, int]:
        return dict(self.store.customer(customer_id)["balance"])

    def unacked(self) -> int:
        count: int = self.store.read(
            lambda c: c.execute("SELECT COUNT(*) FROM outbox WHERE status IS NULL").fetchone()[0]
        )
        return count

    async def sync_until_drained(self, rounds: int = 200) -> None:
        for _ in range(rounds):
            await self.sync.attempt_once()
            if self.unacked() == 0 and self.sync.status.attempt == 0:
                return
        raise AssertionError(f"{self.store_id}: outbox not drained after {rounds} rounds")

    async def close(self) -> None:
        await self.store.close()
        await self.link.close()


async def linked_edge(tmp: Path, cloud: cloudkit.Cloud, store_id: str, seed: int) -> LinkedEdge:
    """An edge registered with the cloud (brand acme), joined to it by a Link."""
    config = make_edge_config(tmp / store_id, store_id=store_id, cloud_key=public_bytes(cloud.key.public))
    install_program(config)
    key: Ed25519PrivateKey = load_key(config.key_path)
    await cloud.storage.add_store(store_id, cloudkit.BRAND, public_bytes(key.public_key()), cloudkit.now_ms())
    store = EdgeStore(config.db_path)
    await store.open()
    link = Link(str(cloud.client.make_url("/")).rstrip("/"), random.Random(seed))
    identity = Identity(store_id, store.meta("node_id"), key_id_for(key.public_key()), key)
    sync = SyncTask(store, link, identity, cloud.key.public, rand=random.Random(seed).random, batch_size=7)
    return LinkedEdge(store_id, store, sync, link, terminal_id=uuid7(int(time.time() * 1000)))
