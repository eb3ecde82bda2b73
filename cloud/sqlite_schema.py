"""SQLite DDL of the cloud ledger, as named migrations (append only, never edit one)."""

from __future__ import annotations

from .migrations import Migration

MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)"
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "0001_ledger",
        (
            # One global, monotonic change counter: customer.version takes ++counter.
            """CREATE TABLE counters (
                name TEXT PRIMARY KEY,
                value INTEGER NOT NULL
            )""",
            "INSERT INTO counters (name, value) VALUES ('change', 0)",
            """CREATE TABLE brands (
                brand_id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                created_at INTEGER NOT NULL
            )""",
            """CREATE TABLE programs (
                brand_id TEXT NOT NULL REFERENCES brands(brand_id),
                version INTEGER NOT NULL,
                name TEXT NOT NULL,
                points_per_unit INTEGER NOT NULL,
                unit_amount INTEGER NOT NULL,
                created_at INTEGER NOT NULL,
                PRIMARY KEY (brand_id, version)
            )""",
            """CREATE TABLE stores (
                store_id TEXT PRIMARY KEY,
                brand_id TEXT NOT NULL REFERENCES brands(brand_id),
                last_seq INTEGER NOT NULL,
                last_hash BLOB NOT NULL,
                created_at INTEGER NOT NULL
            )""",
            """CREATE TABLE store_keys (
                key_id TEXT PRIMARY KEY,
                store_id TEXT NOT NULL REFERENCES stores(store_id),
                public_key BLOB NOT NULL UNIQUE,
                created_at INTEGER NOT NULL,
                revoked_at INTEGER
            )""",
            "CREATE INDEX store_keys_store ON store_keys (store_id)",
            """CREATE TABLE customers (
                customer_id TEXT PRIMARY KEY,
                brand_id TEXT NOT NULL REFERENCES brands(brand_id),
                name TEXT NOT NULL,
                phone TEXT,
                email TEXT,
                card_code TEXT,
                consent TEXT NOT NULL,
                balance INTEGER NOT NULL,
                version INTEGER NOT NULL,
                enrolled_store TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                updated_at INTEGER NOT NULL
            )""",
            "CREATE INDEX customers_brand_version ON customers (brand_id, version)",
            """CREATE TABLE sales (
                store_id TEXT NOT NULL,
                sale_id TEXT NOT NULL,
                customer_id TEXT NOT NULL,
                earned INTEGER NOT NULL,
                redeemed INTEGER NOT NULL,
                voided_by TEXT,
                voided_at INTEGER,
                PRIMARY KEY (store_id, sale_id)
            )""",
            """CREATE TABLE ops (
                op_id TEXT PRIMARY KEY,
                digest BLOB NOT NULL,
                store_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                kind TEXT NOT NULL,
                terminal_id TEXT NOT NULL,
                customer_id TEXT NOT NULL,
                status TEXT NOT NULL,
                code TEXT,
                points INTEGER NOT NULL,
                program_version INTEGER,
                note TEXT,
                at INTEGER NOT NULL,
                created_at INTEGER NOT NULL
            )""",
            """CREATE TABLE ledger_entries (
                id INTEGER PRIMARY KEY,
                customer_id TEXT NOT NULL,
                op_id TEXT NOT NULL,
                store_id TEXT NOT NULL,
                sale_id TEXT,
                kind TEXT NOT NULL,
                points INTEGER NOT NULL,
                at INTEGER NOT NULL
            )""",
            "CREATE INDEX ledger_entries_customer ON ledger_entries (customer_id)",
            """CREATE TABLE conflicts (
                id INTEGER PRIMARY KEY,
                store_id TEXT NOT NULL,
                terminal_id TEXT NOT NULL,
                customer_id TEXT NOT NULL,
                op_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                points_requested INTEGER NOT NULL,
                balance_available INTEGER NOT NULL,
                at INTEGER NOT NULL,
                created_at INTEGER NOT NULL
            )""",
            "CREATE INDEX conflicts_store ON conflicts (store_id)",
            """CREATE TABLE batches (
                store_id TEXT NOT NULL REFERENCES stores(store_id),
                seq INTEGER NOT NULL,
                hash BLOB NOT NULL,
                body BLOB NOT NULL,
                ack BLOB NOT NULL,
                at INTEGER NOT NULL,
                received_at INTEGER NOT NULL,
                PRIMARY KEY (store_id, seq)
            )""",
        ),
    ),
    Migration(
        "0002_program_settings",
        (
            # The program's settings document (kind, rules, rewards, refunds, expiry) as canonical JSON.
            "ALTER TABLE programs ADD COLUMN settings TEXT NOT NULL DEFAULT '{}'",
        ),
    ),
    Migration(
        "0003_operators",
        (
            # People and programs that use the admin API; only the token's SHA-256 is kept.
            # brand_id NULL: every brand (the cloud operator); else that brand only (a merchant).
            """CREATE TABLE operators (
                operator_id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                brand_id TEXT REFERENCES brands(brand_id),
                token_hash BLOB NOT NULL UNIQUE,
                created_at INTEGER NOT NULL,
                revoked_at INTEGER
            )""",
        ),
    ),
    Migration(
        "0004_brand_counters",
        (
            # One change counter per brand instead of one for the whole ledger, so brands never
            # wait on the same row. Each starts at the old global value: no edge's cursor moves back.
            """CREATE TABLE brand_counters (
                brand_id TEXT PRIMARY KEY REFERENCES brands(brand_id),
                value INTEGER NOT NULL
            )""",
            "INSERT INTO brand_counters (brand_id, value)"
            " SELECT brand_id, (SELECT value FROM counters WHERE name = 'change') FROM brands",
            "DROP TABLE counters",
        ),
    ),
    Migration(
        "0005_inbox",
        (
            # Verified batches waiting for the reconciler; a row leaves when its batch is applied.
            """CREATE TABLE inbox (
                store_id TEXT NOT NULL REFERENCES stores(store_id),
                seq INTEGER NOT NULL,
                hash BLOB NOT NULL,
                body BLOB NOT NULL,
                at INTEGER NOT NULL,
                received_at INTEGER NOT NULL,
                PRIMARY KEY (store_id, seq)
            )""",
            "CREATE INDEX inbox_received ON inbox (received_at)",
            # The head of the chain as received (stores.last_* is the head as applied), and when
            # the store was last heard from. A row of its own, so receiving never waits on a store
            # row the reconciler holds.
            """CREATE TABLE store_sync (
                store_id TEXT PRIMARY KEY REFERENCES stores(store_id),
                received_seq INTEGER NOT NULL,
                received_hash BLOB NOT NULL,
                last_batch_at INTEGER,
                last_pull_at INTEGER
            )""",
            "INSERT INTO store_sync (store_id, received_seq, received_hash, last_batch_at)"
            " SELECT s.store_id, s.last_seq, s.last_hash,"
            " (SELECT MAX(b.received_at) FROM batches b WHERE b.store_id = s.store_id) FROM stores s",
        ),
    ),
    Migration(
        "0006_reports",
        (
            # Reports read ledger entries by store and time (a brand is its stores); the covering
            # columns answer them from the index alone.
            "CREATE INDEX ledger_entries_store_at ON ledger_entries (store_id, at, kind, points, customer_id)",
            "CREATE INDEX customers_brand_created ON customers (brand_id, created_at)",
            "CREATE INDEX conflicts_store_at ON conflicts (store_id, at)",
            "DROP INDEX conflicts_store",
            # Outstanding points per brand (store_id NULL) and per store, one set per UTC day,
            # replaced by every run of the periodic job that day; value in minor units (NULL when
            # the program gives points no value).
            """CREATE TABLE liability_snapshots (
                day TEXT NOT NULL,
                brand_id TEXT NOT NULL REFERENCES brands(brand_id),
                store_id TEXT,
                points INTEGER NOT NULL,
                value INTEGER,
                taken_at INTEGER NOT NULL
            )""",
            "CREATE INDEX liability_snapshots_brand_day ON liability_snapshots (brand_id, day)",
            # How far each store's batch chain has been checked by the integrity audit.
            """CREATE TABLE chain_audits (
                store_id TEXT PRIMARY KEY REFERENCES stores(store_id),
                seq INTEGER NOT NULL,
                hash BLOB NOT NULL,
                checked_at INTEGER NOT NULL
            )""",
        ),
    ),
)
