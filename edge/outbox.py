"""Writer jobs of the sync side: cut a batch, apply an ack, apply a downlink.

Each runs in one transaction with the state it advances, so a crash leaves
either the old state or the new one: a batch is stored (and its ops marked)
before its first byte is sent, and an ack or downlink is applied together
with the cursor it moves.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import GENESIS_HASH, Ack, Batch, CustomerRecord, Downlink, OpStatus, op_from_wire, seal_batch
from protocol.normalize import name_key

from .claim_writes import apply_cloud_link
from .erasure import erased_in_batch, redact_acked, scrub_customer
from .merges import fold
from .store import get_meta, load_program, save_program, set_meta

log = logging.getLogger(__name__)
T = TypeVar("T")
Job = Callable[[sqlite3.Connection], T]
#: Op bodies per batch, well under the 4 MiB a batch envelope may be: an earn
#: carries its sale, and a terminal's body may be 16 KiB.
MAX_BATCH_BODY_BYTES = 3 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class PendingBatch:
    seq: int
    hash: bytes
    envelope: bytes
    op_count: int


@dataclass(frozen=True, slots=True)
class Identity:
    store_id: str
    node_id: str
    key_id: str
    private_key: Ed25519PrivateKey


@dataclass(frozen=True, slots=True)
class NewBatch:
    """A batch built and signed from the outbox, not yet stored."""

    batch: PendingBatch
    prev_seq: int
    last_outbox_seq: int


def prepare_batch(
    conn: sqlite3.Connection, identity: Identity, now: int, max_ops: int
) -> PendingBatch | NewBatch | None:
    """Read only: the unacknowledged batch to resend byte for byte, or a new
    batch of the oldest unbatched ops, built and signed.

    Building 1,000 ops takes ~20 ms; doing it here, on a connection of its
    own outside the writer, keeps terminal writes from waiting on it.
    """
    row = conn.execute(
        "SELECT seq, hash, envelope, op_count FROM batches WHERE acked_at IS NULL ORDER BY seq LIMIT 1"
    ).fetchone()
    if row is not None:
        return PendingBatch(*row)
    rows = conn.execute(
        "SELECT seq, body FROM outbox WHERE batch_seq IS NULL ORDER BY seq LIMIT ?", (max_ops,)
    ).fetchall()
    if not rows:
        return None
    size = 0
    for count, (_, body) in enumerate(rows):
        size += len(body)
        if size > MAX_BATCH_BODY_BYTES and count > 0:
            rows = rows[:count]
            break
    last = conn.execute("SELECT seq, hash FROM batches ORDER BY seq DESC LIMIT 1").fetchone()
    prev_seq, prev = (0, GENESIS_HASH) if last is None else (last[0], last[1])
    ops = tuple(op_from_wire(msgpack.unpackb(body, raw=False, use_list=False)) for _, body in rows)
    batch = Batch(
        store_id=identity.store_id,
        node_id=identity.node_id,
        key_id=identity.key_id,
        seq=prev_seq + 1,
        prev_hash=prev,
        at=now,
        ops=ops,
    )
    envelope, digest = seal_batch(batch, identity.private_key)
    return NewBatch(PendingBatch(batch.seq, digest, envelope, len(ops)), prev_seq, rows[-1][0])


def store_batch(new: NewBatch, now: int) -> Job[bool]:
    """Store a prepared batch and mark its ops, before its first byte is sent.

    False if the outbox moved under it (it is then prepared again): the
    chain head must still be the batch it extends, and its ops still unbatched.
    """

    def job(conn: sqlite3.Connection) -> bool:
        head = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM batches").fetchone()[0]
        waiting = conn.execute(
            "SELECT COUNT(*) FROM outbox WHERE batch_seq IS NULL AND seq <= ?", (new.last_outbox_seq,)
        ).fetchone()[0]
        if head != new.prev_seq or waiting != new.batch.op_count:
            return False
        pending = new.batch
        conn.execute(
            "INSERT INTO batches (seq, hash, envelope, op_count, created_at) VALUES (?, ?, ?, ?, ?)",
            (pending.seq, pending.hash, pending.envelope, pending.op_count, now),
        )
        conn.execute(
            "UPDATE outbox SET batch_seq = ? WHERE batch_seq IS NULL AND seq <= ?", (pending.seq, new.last_outbox_seq)
        )
        return True

    return job


def apply_ack(ack: Ack, now: int) -> Job[dict[str, int]]:
    """Mark the batch's ops with the cloud's results and take its balances."""

    def job(conn: sqlite3.Connection) -> dict[str, int]:
        conn.executemany(
            "UPDATE outbox SET status = ?, result_code = ?, result_points = ?, acked_at = ? "
            "WHERE op_id = ? AND batch_seq = ?",
            [(r.status.value, r.code, r.points, now, r.op_id, ack.seq) for r in ack.results],
        )
        refused = [r for r in ack.results if r.status is OpStatus.REFUSED]
        for result in refused:
            row = conn.execute(
                "SELECT kind, customer_id, terminal_id, sale_id, delta, created_at FROM outbox WHERE op_id = ?",
                (result.op_id,),
            ).fetchone()
            if row is None:
                continue
            kind, customer_id, terminal_id, sale_id, delta, created_at = row
            if kind == "refund" and sale_id is not None:
                _undo_refund(conn, result.op_id, sale_id)
            conn.execute(
                "INSERT OR IGNORE INTO conflicts (op_id, kind, customer_id, terminal_id, sale_id, points, "
                "code, op_at, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (result.op_id, kind, customer_id, terminal_id, sale_id, abs(delta), result.code or "refused",
                 created_at, now),
            )
            # The sale keeps only what the cloud applied, so a later void
            # gives back nothing that was never taken.
            if kind == "redeem" and sale_id is not None:
                conn.execute(
                    "UPDATE sales SET redeemed = MAX(0, redeemed + ?) WHERE sale_id = ?", (delta, sale_id)
                )
            elif kind in ("earn", "claim") and sale_id is not None:
                conn.execute(
                    "UPDATE sales SET earned = MAX(0, earned - ?) WHERE sale_id = ?", (delta, sale_id)
                )
        conn.executemany(
            "UPDATE customers SET confirmed = ?, version = ? WHERE customer_id = ? AND version < ?",
            [(b.points, b.version, b.customer_id, b.version) for b in ack.balances],
        )
        conn.execute("UPDATE batches SET acked_at = ? WHERE seq = ?", (now, ack.seq))
        erased = erased_in_batch(conn, [r.op_id for r in ack.results])
        if erased:  # kept byte for byte until now (edge.erasure): never sent again
            redact_acked(conn, ack.seq, erased)
        return {"applied": len(ack.results) - len(refused), "refused": len(refused)}

    return job


def _undo_refund(conn: sqlite3.Connection, op_id: str, sale_id: str) -> None:
    """A refund the cloud refused moved nothing there: the sale's reversed
    totals drop it, so a later void takes back what is really left. The
    returned quantities stay: the goods came back either way."""
    body = conn.execute("SELECT body FROM outbox WHERE op_id = ?", (op_id,)).fetchone()[0]
    op = msgpack.unpackb(body, raw=False)
    conn.execute(
        "UPDATE sales SET earn_reversed = MAX(0, earn_reversed - ?), redeem_returned = MAX(0, redeem_returned - ?)"
        " WHERE sale_id = ?",
        (op["reversed_points"], op["returned_points"], sale_id),
    )


def apply_downlink(downlink: Downlink, now: int) -> Job[bool]:
    """Take newer customers and program settings, and move the cursor; False if stale."""

    def job(conn: sqlite3.Connection) -> bool:
        cursor = get_meta(conn, "cursor", 0)
        if downlink.from_cursor != cursor:
            log.warning("ignoring a downlink from cursor %d; ours is %d", downlink.from_cursor, cursor)
            return False
        for c in downlink.customers:
            if c.erased:
                scrub_customer(conn, c, now)
            elif _take_customer(conn, c, now):
                apply_cloud_link(conn, c.customer_id, c.card_token, now)
            if c.merged_into is not None:
                fold(conn, c.customer_id, c.merged_into)
        program = downlink.program
        if program is not None:
            current = load_program(conn)
            if current is None or program.version > current.version:
                save_program(conn, program)
                log.info("program %s version %d received", program.brand_id, program.version)
        set_meta(conn, "cursor", downlink.to_cursor)
        set_meta(conn, "last_downlink_at", now)
        return True

    return job


def _take_customer(conn: sqlite3.Connection, c: CustomerRecord, now: int) -> bool:
    """A downlink's customer record, if it is not older than ours; whether it was taken."""
    local = conn.execute(
        "SELECT version FROM customers WHERE customer_id = ?", (c.customer_id,)
    ).fetchone()
    groups = json.dumps(list(c.groups))
    expiring = json.dumps([list(e) for e in c.expiring])
    if local is None:
        conn.execute(
            "INSERT INTO customers (customer_id, name, name_key, phone, email, card_code, confirmed, "
            "version, created_at, updated_at, groups, opted_out, expiring) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (c.customer_id, c.name, name_key(c.name), c.phone, c.email, c.card_code, c.balance,
             c.version, now, now, groups, c.opted_out, expiring),
        )
        return True
    # The same version again is taken too: an ack may have brought the
    # version with the balance alone, and this record has the rest.
    if local[0] > c.version:
        return False
    profile_pending = conn.execute(
        "SELECT 1 FROM outbox WHERE customer_id = ? AND status IS NULL "
        "AND kind IN ('enroll', 'update_profile') LIMIT 1",
        (c.customer_id,),
    ).fetchone()
    if profile_pending:
        # Our own unconfirmed profile change is newer than this record.
        conn.execute(
            "UPDATE customers SET confirmed = ?, version = ?, expiring = ? WHERE customer_id = ?",
            (c.balance, c.version, expiring, c.customer_id),
        )
    else:
        conn.execute(
            "UPDATE customers SET name = ?, name_key = ?, phone = ?, email = ?, card_code = ?, "
            "confirmed = ?, version = ?, updated_at = ?, groups = ?, opted_out = ?, expiring = ? "
            "WHERE customer_id = ?",
            (c.name, name_key(c.name), c.phone, c.email, c.card_code, c.balance, c.version, now,
             groups, c.opted_out, expiring, c.customer_id),
        )
    return True


IDEMPOTENCY_KEEP_MS = 7 * 24 * 3600 * 1000
ACKED_KEEP_MS = 30 * 24 * 3600 * 1000
CLAIM_ATTEMPTS_KEEP_MS = 24 * 3600 * 1000


def prune(now: int) -> Job[dict[str, int]]:
    """Forget what no retry or audit can need any more, so the file stays small.

    Idempotency answers are kept a week (far beyond any terminal's retries),
    acknowledged ops and batches a month. The newest batch always stays: the
    next batch chains to its hash. A receipt's claim record goes a month after
    its code expired (a claim is refused by then anyway: ``claim_expired``
    until it goes, ``unknown_code`` after), and refused-claim counters after a day.
    """

    def job(conn: sqlite3.Connection) -> dict[str, int]:
        keys = conn.execute("DELETE FROM idempotency WHERE created_at < ?", (now - IDEMPOTENCY_KEEP_MS,)).rowcount
        ops = conn.execute(
            "DELETE FROM outbox WHERE status IS NOT NULL AND acked_at < ?", (now - ACKED_KEEP_MS,)
        ).rowcount
        batches = conn.execute(
            "DELETE FROM batches WHERE acked_at < ? AND seq < (SELECT MAX(seq) FROM batches)",
            (now - ACKED_KEEP_MS,),
        ).rowcount
        claims = conn.execute("DELETE FROM claims WHERE expires_at < ?", (now - ACKED_KEEP_MS,)).rowcount
        conn.execute("DELETE FROM claim_attempts WHERE window_start < ?", (now - CLAIM_ATTEMPTS_KEEP_MS,))
        return {"idempotency_keys": keys, "ops": ops, "batches": batches, "claims": claims}

    return job
