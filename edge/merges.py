"""Profiles the cloud merged: a duplicate card code or phone folded into the older profile.

A downlink record with ``merged_into`` is a tombstone. The edge keeps it
(marked), so every id it ever handed out still works: reads and writes that
name a merged id are served as its survivor (``resolve``), and a search that
finds the tombstone (by a second card it kept) shows the survivor. The
duplicate's unconfirmed balance ops and its sales move to the survivor, so
``available`` counts every pending debit of the customer once; the ops keep
the old id in their bodies and the cloud redirects them. Profile ops stay
with the tombstone: they are not balance, and the survivor's profile as the
cloud sends it must not wait for them.
"""

from __future__ import annotations

import logging
import sqlite3

log = logging.getLogger(__name__)

#: The cloud points every tombstone straight at its survivor; a few hops cover merges in flight.
MAX_HOPS = 8


def resolve(conn: sqlite3.Connection, customer_id: str) -> str:
    """The live profile behind ``customer_id`` (itself unless it was merged)."""
    for _ in range(MAX_HOPS):
        row = conn.execute("SELECT merged_into FROM customers WHERE customer_id = ?", (customer_id,)).fetchone()
        if row is None or row[0] is None:
            return customer_id
        customer_id = row[0]
    return customer_id


def fold(conn: sqlite3.Connection, duplicate_id: str, survivor_id: str) -> None:
    """Move the duplicate's pending balance ops and its sales to the survivor (in the downlink's
    transaction), and point its own tombstones at the survivor."""
    moved = conn.execute(
        "UPDATE outbox SET customer_id = ? WHERE customer_id = ? AND status IS NULL"
        " AND kind NOT IN ('enroll', 'update_profile')",
        (survivor_id, duplicate_id),
    ).rowcount
    conn.execute("UPDATE sales SET customer_id = ? WHERE customer_id = ?", (survivor_id, duplicate_id))
    conn.execute("UPDATE customers SET merged_into = ? WHERE merged_into = ?", (survivor_id, duplicate_id))
    conn.execute("UPDATE customers SET merged_into = ? WHERE customer_id = ?", (survivor_id, duplicate_id))
    log.info("customer %s merged into %s by the cloud (%d pending ops moved)", duplicate_id, survivor_id, moved)
