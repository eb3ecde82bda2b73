"""SQLite connections and named migrations for the edge store.

Durability settings are not negotiable: WAL with ``synchronous=FULL``. With
``NORMAL`` a power cut can lose transactions that were already committed,
and a committed earn is one a terminal has printed on a receipt.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

log = logging.getLogger(__name__)

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_core",
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
        CREATE TABLE customers (
            customer_id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            name_key TEXT NOT NULL,
            phone TEXT,
            email TEXT,
            card_code TEXT,
            consent TEXT,
            confirmed INTEGER NOT NULL DEFAULT 0,
            version INTEGER NOT NULL DEFAULT 0,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX customers_phone ON customers(phone, created_at) WHERE phone IS NOT NULL;
        CREATE INDEX customers_email ON customers(email, created_at) WHERE email IS NOT NULL;
        CREATE INDEX customers_card ON customers(card_code, created_at) WHERE card_code IS NOT NULL;
        CREATE INDEX customers_name ON customers(name_key, created_at);
        CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            op_id TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            sale_id TEXT,
            terminal_id TEXT NOT NULL,
            delta INTEGER NOT NULL,
            debit INTEGER NOT NULL,
            body BLOB NOT NULL,
            created_at INTEGER NOT NULL,
            batch_seq INTEGER,
            status TEXT,
            result_code TEXT,
            result_points INTEGER,
            acked_at INTEGER
        );
        CREATE INDEX outbox_pending ON outbox(customer_id) WHERE status IS NULL;
        CREATE INDEX outbox_unbatched ON outbox(seq) WHERE batch_seq IS NULL;
        CREATE TABLE batches (
            seq INTEGER PRIMARY KEY,
            hash BLOB NOT NULL,
            envelope BLOB NOT NULL,
            op_count INTEGER NOT NULL,
            created_at INTEGER NOT NULL,
            acked_at INTEGER
        );
        CREATE TABLE sales (
            sale_id TEXT PRIMARY KEY,
            customer_id TEXT NOT NULL,
            amount INTEGER NOT NULL DEFAULT 0,
            earned INTEGER NOT NULL DEFAULT 0,
            redeemed INTEGER NOT NULL DEFAULT 0,
            earn_op_id TEXT,
            voided_at INTEGER
        ) WITHOUT ROWID;
        CREATE TABLE idempotency (
            terminal_id TEXT NOT NULL,
            key TEXT NOT NULL,
            request_hash BLOB NOT NULL,
            status INTEGER NOT NULL,
            response BLOB NOT NULL,
            created_at INTEGER NOT NULL,
            PRIMARY KEY (terminal_id, key)
        ) WITHOUT ROWID;
        CREATE TABLE terminals (
            terminal_id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            token_hash BLOB NOT NULL UNIQUE,
            created_at INTEGER NOT NULL,
            last_seen INTEGER,
            revoked_at INTEGER
        ) WITHOUT ROWID;
        CREATE TABLE pairing_codes (
            code_hash BLOB PRIMARY KEY,
            expires_at INTEGER NOT NULL,
            used_at INTEGER
        ) WITHOUT ROWID;
        CREATE TABLE conflicts (
            op_id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            terminal_id TEXT NOT NULL,
            sale_id TEXT,
            points INTEGER NOT NULL,
            code TEXT NOT NULL,
            op_at INTEGER NOT NULL,
            recorded_at INTEGER NOT NULL
        ) WITHOUT ROWID;
        """,
    ),
    (
        "0002_cloud_keys",
        """
        -- The cloud keys this node accepts: the pinned one, then each announced successor
        -- (seq: the order they were trusted in, the newest last). version is the cloud's
        -- number (0 for a key pinned by hand). A key is refused from retire_at on, set to
        -- overlap_ms (of the first newer key seen in use) after that key was first seen.
        CREATE TABLE cloud_keys (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            key_id TEXT NOT NULL UNIQUE,
            public_key BLOB NOT NULL,
            version INTEGER NOT NULL,
            overlap_ms INTEGER NOT NULL,
            announcement BLOB,
            adopted_at INTEGER NOT NULL,
            retire_at INTEGER
        );
        """,
    ),
    (
        "0003_loyalty_ops",
        """
        ALTER TABLE customers ADD COLUMN groups TEXT NOT NULL DEFAULT '[]';
        ALTER TABLE customers ADD COLUMN opted_out INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE customers ADD COLUMN expiring TEXT NOT NULL DEFAULT '[]';
        ALTER TABLE sales ADD COLUMN basis BLOB;
        ALTER TABLE sales ADD COLUMN returned TEXT NOT NULL DEFAULT '{}';
        ALTER TABLE sales ADD COLUMN earn_reversed INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE sales ADD COLUMN redeem_returned INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE programs (
            version INTEGER PRIMARY KEY,
            body BLOB NOT NULL
        );
        """,
    ),
    (
        "0004_identity_claims",
        """
        -- A processor's card token linked to a profile (never a card number). op_id: the local
        -- earn that linked it while the cloud has not confirmed it (NULL once from the cloud).
        CREATE TABLE card_links (
            token TEXT PRIMARY KEY,
            customer_id TEXT NOT NULL UNIQUE,
            op_id TEXT,
            linked_at INTEGER NOT NULL
        ) WITHOUT ROWID;
        -- The token of each profile's last card payment at this store (protocol.claims.card_step).
        CREATE TABLE card_streaks (
            customer_id TEXT PRIMARY KEY,
            last_token TEXT
        ) WITHOUT ROWID;
        -- Sales recorded without a profile: only the SHA-256 of their claim code is kept.
        CREATE TABLE claims (
            code_hash TEXT PRIMARY KEY,
            sale_id TEXT NOT NULL UNIQUE,
            op_id TEXT NOT NULL,
            amount INTEGER NOT NULL,
            program_version INTEGER NOT NULL,
            sale BLOB NOT NULL,
            at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            claimed_by TEXT,
            claimed_at INTEGER,
            claim_op_id TEXT
        ) WITHOUT ROWID;
        -- Refused claim attempts per terminal and hour: stored, so a restart keeps the limit.
        CREATE TABLE claim_attempts (
            terminal_id TEXT NOT NULL,
            window_start INTEGER NOT NULL,
            failures INTEGER NOT NULL,
            PRIMARY KEY (terminal_id, window_start)
        ) WITHOUT ROWID;
        """,
    ),
    (
        "0005_identity_merge",
        """
        -- A profile the cloud merged into an older one with the same card code or phone
        -- (edge/merges.py): kept as a tombstone naming its survivor, so the old id still works.
        ALTER TABLE customers ADD COLUMN merged_into TEXT;
        CREATE INDEX customers_merged_into ON customers(merged_into) WHERE merged_into IS NOT NULL;
        """,
    ),
    (
        "0006_erasure",
        """
        -- The cloud erased this customer's personal data (edge.erasure): the row stays, anonymous.
        ALTER TABLE customers ADD COLUMN erased_at INTEGER;
        """,
    ),
]


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the database with the pragmas every edge connection needs."""
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    if not readonly:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise sqlite3.OperationalError(f"could not enable WAL (journal_mode={mode})")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    # Deleted and rewritten content is overwritten with zeros rather than left in the
    # file's free space: an erased customer must not linger there (edge.erasure).
    conn.execute("PRAGMA secure_delete = ON")
    return conn


def migrate(conn: sqlite3.Connection, now_ms: int | None = None) -> list[str]:
    """Apply the named migrations that are not yet recorded; return their names."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    conn.execute(
        "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)"
    )
    done = {row[0] for row in conn.execute("SELECT name FROM migrations")}
    applied = []
    for name, sql in MIGRATIONS:
        if name in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in sql.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (name, now_ms))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("applied migration %s", name)
        applied.append(name)
    return applied
