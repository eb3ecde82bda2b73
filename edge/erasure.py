"""Scrubbing an erased customer from the edge, as the downlink tells it (``CustomerRecord.erased``).

Runs inside the downlink's writer transaction. The customers row stays,
anonymous (its balance and version still count), with ``erased_at``; the
personal data goes from every place the edge kept a copy:

- the sale bases (card tokens; lines and amounts stay, so refunds still work);
- the idempotency answers that echo the profile (a replay then answers the
  scrubbed profile);
- the outbox: every op of the customer is rewritten without personal data
  (``protocol.privacy.scrub_op``). An op not yet cut into a batch is rewritten
  too, so it is never sent with the data: a profile update left with nothing
  to say is dropped (the cloud has erased the profile anyway). An enrollment
  is always in a batch before the cloud can know the customer, so it is
  never among them;
- the stored batch envelopes. An acknowledged batch is never sent again: its
  envelope is rewritten. A batch cut but not yet acknowledged must be resent
  byte for byte (it is signed and chained, and the cloud may already hold
  it): it keeps its bytes until its ack, and ``apply_ack`` scrubs it then
  (``redact_acked``). The cloud never stores those bytes again (it answers a
  resend from the hash, and scrubs a late batch's ops as it applies them).

Deleted and rewritten content is overwritten in the file (``secure_delete``,
``db.connect``); ``checkpoint`` then truncates the WAL, which held the old
page images.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack

from protocol import CustomerRecord, ProtocolError, op_from_wire
from protocol.privacy import redact_envelope, scrub_basis, scrub_op, scrub_sale_bytes

log = logging.getLogger(__name__)
#: Keys of an API answer that hold a profile's personal data.
_ANSWER_FIELDS = ("name", "phone", "email", "card_code", "consent")


def scrub_customer(conn: sqlite3.Connection, record: CustomerRecord, now: int) -> dict[str, int]:
    """Erase ``record``'s customer from this edge; counts of rows changed, per table."""
    cid = record.customer_id
    groups = json.dumps(list(record.groups))
    expiring = json.dumps([list(e) for e in record.expiring])
    if conn.execute("SELECT 1 FROM customers WHERE customer_id = ? AND erased_at IS NOT NULL", (cid,)).fetchone():
        # Scrubbed already: a later version only moves the balance.
        conn.execute(
            "UPDATE customers SET confirmed = ?, version = ?, groups = ?, opted_out = ?, expiring = ?"
            " WHERE customer_id = ? AND version <= ?",
            (record.balance, record.version, groups, record.opted_out, expiring, cid, record.version),
        )
        return {}
    done = {"customers": conn.execute(
        "UPDATE customers SET name = '', name_key = '', phone = NULL, email = NULL, card_code = NULL, consent = NULL,"
        " confirmed = ?, version = MAX(version, ?), updated_at = ?, groups = ?, opted_out = ?, expiring = ?,"
        " erased_at = ? WHERE customer_id = ?",
        (record.balance, record.version, now, groups, record.opted_out, expiring, now, cid),
    ).rowcount}
    if not done["customers"]:
        # Never seen here: keep the anonymous row, so a late ack or op finds it erased.
        conn.execute(
            "INSERT INTO customers (customer_id, name, name_key, confirmed, version, created_at, updated_at, groups,"
            " opted_out, expiring, erased_at) VALUES (?, '', '', ?, ?, ?, ?, ?, ?, ?, ?)",
            (cid, record.balance, record.version, now, now, groups, record.opted_out, expiring, now),
        )
    done["sales"] = _scrub_sales(conn, cid)
    done["card_links"] = conn.execute("DELETE FROM card_links WHERE customer_id = ?", (cid,)).rowcount
    conn.execute("DELETE FROM card_streaks WHERE customer_id = ?", (cid,))
    done["claims"] = _scrub_claims(conn, cid)
    done["idempotency"] = _scrub_answers(conn, cid)
    done["outbox"] = _scrub_outbox(conn, cid)
    done["batches"] = _scrub_batches(conn, cid)
    log.info("customer %s erased here: %s", cid, done)
    return done


def _scrub_sales(conn: sqlite3.Connection, cid: str) -> int:
    count = 0
    for sale_id, basis in conn.execute(
        "SELECT sale_id, basis FROM sales WHERE customer_id = ? AND basis IS NOT NULL", (cid,)
    ).fetchall():
        clean = scrub_basis(basis)
        if clean != basis:
            conn.execute("UPDATE sales SET basis = ? WHERE sale_id = ?", (clean, sale_id))
            count += 1
    return count


def _scrub_claims(conn: sqlite3.Connection, cid: str) -> int:
    count = 0
    for code_hash, sale in conn.execute("SELECT code_hash, sale FROM claims WHERE claimed_by = ?", (cid,)).fetchall():
        clean = scrub_sale_bytes(sale)
        if clean != sale:
            conn.execute("UPDATE claims SET sale = ? WHERE code_hash = ?", (clean, code_hash))
            count += 1
    return count


def _scrub_json(value: Any, cid: str) -> Any:
    if isinstance(value, dict):
        mine = value.get("customer_id") == cid
        return {k: None if mine and k in _ANSWER_FIELDS else _scrub_json(v, cid) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_json(v, cid) for v in value]
    return value


def _scrub_answers(conn: sqlite3.Connection, cid: str) -> int:
    """Stored answers naming the customer (found by the id, which every such answer carries)."""
    count = 0
    for terminal_id, key, response in conn.execute(
        "SELECT terminal_id, key, response FROM idempotency WHERE CAST(response AS TEXT) LIKE ?",
        (f'%"{cid}"%',),
    ).fetchall():
        clean = json.dumps(_scrub_json(json.loads(response), cid), separators=(",", ":")).encode()
        if clean != bytes(response):
            conn.execute("UPDATE idempotency SET response = ? WHERE terminal_id = ? AND key = ?",
                         (clean, terminal_id, key))
            count += 1
    return count


def _scrub_outbox(conn: sqlite3.Connection, cid: str) -> int:
    count = 0
    for seq, kind, body, batch_seq in conn.execute(
        "SELECT seq, kind, body, batch_seq FROM outbox WHERE customer_id = ?", (cid,)
    ).fetchall():
        op = msgpack.unpackb(body, raw=False)
        clean = scrub_op(op)
        if clean == op:
            continue
        if batch_seq is None:
            # Still to be sent: what is left must be a valid op, or nothing.
            try:
                op_from_wire(clean)
            except ProtocolError:
                if kind == "enroll":  # cannot happen (see the module doc); never drop one silently
                    log.error("an unsent enrollment of erased customer %s kept as it is", cid)
                    continue
                conn.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
                count += 1
                continue
        conn.execute("UPDATE outbox SET body = ? WHERE seq = ?", (msgpack.packb(clean, use_bin_type=True), seq))
        count += 1
    return count


def _scrub_batches(conn: sqlite3.Connection, cid: str) -> int:
    """The acknowledged batches that carried the customer's ops: those the outbox still maps,
    and the newest batch (kept past the outbox's pruning: the next batch chains to it)."""
    seqs = {r[0] for r in conn.execute(
        "SELECT DISTINCT batch_seq FROM outbox WHERE customer_id = ? AND batch_seq IS NOT NULL", (cid,))}
    newest = conn.execute("SELECT MAX(seq) FROM batches").fetchone()[0]
    if newest is not None:
        seqs.add(newest)
    return sum(redact_acked(conn, seq, {cid}) for seq in sorted(seqs))


def redact_acked(conn: sqlite3.Connection, seq: int, customer_ids: set[str]) -> int:
    """Scrub the stored envelope of acknowledged batch ``seq``; 1 if it changed."""
    row = conn.execute("SELECT envelope FROM batches WHERE seq = ? AND acked_at IS NOT NULL", (seq,)).fetchone()
    if row is None:
        return 0
    clean = redact_envelope(row[0], customer_ids)
    if clean is None:
        return 0
    conn.execute("UPDATE batches SET envelope = ? WHERE seq = ?", (clean, seq))
    return 1


def erased_in_batch(conn: sqlite3.Connection, op_ids: Sequence[str]) -> set[str]:
    """Erased customers among those the batch's ops (``op_ids``, as its ack answers them) name:
    found through the outbox's op_id index, since an ack comes every few seconds and the outbox
    keeps a month of acknowledged ops."""
    return {r[0] for r in conn.execute(
        "SELECT DISTINCT o.customer_id FROM outbox o JOIN customers c ON c.customer_id = o.customer_id"
        " WHERE o.op_id IN (SELECT value FROM json_each(?)) AND c.erased_at IS NOT NULL",
        (json.dumps(list(op_ids)),))}


def checkpoint(path: Path) -> bool:
    """Copy the WAL into the database and truncate it to zero bytes, so the old page images it
    held leave the live files; on a connection of its own, outside any transaction (blocking:
    run it in a thread). False if a reader kept it from finishing (the next one will)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    finally:
        conn.close()
    if busy:
        log.warning("the WAL checkpoint after an erasure was blocked; the next one completes it")
    return not busy
