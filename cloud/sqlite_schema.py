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
    ),    Migration(
        "0004_loyalty_ops",
        (
            # Customer groups (JSON list) and opt-out: what the earning rules check.
            "ALTER TABLE customers ADD COLUMN groups TEXT NOT NULL DEFAULT '[]'",
            "ALTER TABLE customers ADD COLUMN opted_out INTEGER NOT NULL DEFAULT 0",
            # The earn's basis (sale, version, rated customer) and what refunds took back, per sale.
            "ALTER TABLE sales ADD COLUMN basis BLOB",
            "ALTER TABLE sales ADD COLUMN returned TEXT NOT NULL DEFAULT '{}'",
            "ALTER TABLE sales ADD COLUMN earn_reversed INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE sales ADD COLUMN redeem_returned INTEGER NOT NULL DEFAULT 0",
            # Ops applied as the edge computed them while the cloud computed otherwise.
            """CREATE TABLE mismatches (
                id INTEGER PRIMARY KEY,
                store_id TEXT NOT NULL,
                op_id TEXT NOT NULL,
                customer_id TEXT NOT NULL,
                sale_id TEXT,
                kind TEXT NOT NULL,
                program_version INTEGER,
                edge_points INTEGER NOT NULL,
                cloud_points INTEGER,
                reason TEXT NOT NULL,
                at INTEGER NOT NULL,
                created_at INTEGER NOT NULL
            )""",
            "CREATE INDEX mismatches_store ON mismatches (store_id)",
            # Reversals the refund policy clamped at zero or took below zero.
            """CREATE TABLE shortfalls (
                id INTEGER PRIMARY KEY,
                store_id TEXT NOT NULL,
                op_id TEXT NOT NULL,
                customer_id TEXT NOT NULL,
                sale_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                policy TEXT NOT NULL,
                points INTEGER NOT NULL,
                balance_after INTEGER NOT NULL,
                at INTEGER NOT NULL,
                created_at INTEGER NOT NULL
            )""",
            "CREATE INDEX shortfalls_store ON shortfalls (store_id)",
            # Operators' adjustments made in the cloud (the ledger entry carries the points).
            """CREATE TABLE adjustments (
                op_id TEXT PRIMARY KEY,
                brand_id TEXT NOT NULL,
                customer_id TEXT NOT NULL,
                points INTEGER NOT NULL,
                reason TEXT NOT NULL,
                actor TEXT NOT NULL,
                operator_id TEXT,
                balance_after INTEGER NOT NULL,
                version INTEGER NOT NULL,
                at INTEGER NOT NULL
            )""",
            "CREATE INDEX adjustments_customer ON adjustments (customer_id)",
            # A signup bonus is granted once per customer, ever: the ledger itself refuses a second.
            "CREATE UNIQUE INDEX ledger_entries_signup_once ON ledger_entries (customer_id)"
            " WHERE kind = 'signup_bonus'",
        ),
    ),
)
