"""SQLite DDL of the cloud ledger, as named migrations (append only, never edit one)."""

from __future__ import annotations

from .migrations import Migration
from .sqlite_schema_identity import IDENTITY_MIGRATIONS

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
        "0004_messages_and_portal",
        (
            # The outbox: written in the transaction of the event that causes a message, unique per
            # event (dedupe_key), claimed by one dispatcher at a time (claim_token until claimed_until).
            # No address here: it is read from the customer when the message is sent.
            """CREATE TABLE messages (
                message_id INTEGER PRIMARY KEY,
                dedupe_key TEXT NOT NULL UNIQUE,
                brand_id TEXT NOT NULL,
                customer_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                data TEXT NOT NULL,
                status TEXT NOT NULL DEFAULT 'pending',
                channel TEXT,
                attempts INTEGER NOT NULL DEFAULT 0,
                next_attempt_at INTEGER NOT NULL DEFAULT 0,
                claimed_until INTEGER,
                claim_token TEXT,
                last_error TEXT,
                provider_ref TEXT,
                created_at INTEGER NOT NULL,
                finished_at INTEGER
            )""",
            "CREATE INDEX messages_open ON messages (next_attempt_at) WHERE status IN ('pending', 'sending')",
            "CREATE INDEX messages_customer ON messages (customer_id)",
            # Every grant or withdrawal of consent to be contacted, newest wins per channel.
            """CREATE TABLE consents (
                id INTEGER PRIMARY KEY,
                brand_id TEXT NOT NULL,
                customer_id TEXT NOT NULL,
                channel TEXT NOT NULL,
                granted INTEGER NOT NULL,
                at INTEGER NOT NULL,
                source TEXT NOT NULL,
                terminal_id TEXT,
                staff TEXT
            )""",
            "CREATE INDEX consents_customer ON consents (customer_id)",
            # Customers enrolled before this migration: their enrollment consent becomes records.
            """INSERT INTO consents (brand_id, customer_id, channel, granted, at, source, terminal_id, staff)
               SELECT c.brand_id, c.customer_id, j.value, 1, json_extract(c.consent, '$.at'),
                      json_extract(c.consent, '$.source'), o.terminal_id, json_extract(c.consent, '$.staff')
               FROM customers c JOIN json_each(c.consent, '$.channels') j
               LEFT JOIN ops o ON o.customer_id = c.customer_id AND o.kind = 'enroll' AND o.status = 'applied'
               ORDER BY c.created_at, c.customer_id""",
            "CREATE INDEX customers_brand_phone ON customers (brand_id, phone)",
            "CREATE INDEX customers_brand_email ON customers (brand_id, email)",
            # Portal sign-in codes: keyed hashes of the contact and the code, never the values.
            """CREATE TABLE otp_challenges (
                challenge_id TEXT PRIMARY KEY,
                brand_id TEXT NOT NULL,
                contact_hash TEXT NOT NULL,
                code_hash TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                expires_at INTEGER NOT NULL,
                tries INTEGER NOT NULL,
                used_at INTEGER
            )""",
            "CREATE INDEX otp_challenges_expiry ON otp_challenges (expires_at)",
            # Fixed-window attempt counters (per contact, per client address), kept across restarts.
            """CREATE TABLE portal_limits (
                key TEXT PRIMARY KEY,
                window_start INTEGER NOT NULL,
                count INTEGER NOT NULL
            )""",
            """CREATE TABLE portal_sessions (
                token_hash TEXT PRIMARY KEY,
                brand_id TEXT NOT NULL,
                customer_id TEXT NOT NULL,
                created_at INTEGER NOT NULL,
                expires_at INTEGER NOT NULL
            )""",
        ),
    ),
    Migration(
        "0005_store_keys",
        (
            # A revoked store: its batches, pulls and key changes are refused, with the reason.
            "ALTER TABLE stores ADD COLUMN revoked_at INTEGER",
            "ALTER TABLE stores ADD COLUMN revoke_reason TEXT",
            # After a rotation the old key works until expires_at (the overlap window); replaced_by
            # names its successor, so a key is replaced once.
            "ALTER TABLE store_keys ADD COLUMN expires_at INTEGER",
            "ALTER TABLE store_keys ADD COLUMN replaced_by TEXT",
            # One-time enrollment tokens: only their SHA-256; key_id is the key that claimed one.
            """CREATE TABLE claim_tokens (
                token_hash BLOB PRIMARY KEY,
                store_id TEXT NOT NULL REFERENCES stores(store_id),
                created_at INTEGER NOT NULL,
                expires_at INTEGER NOT NULL,
                used_at INTEGER,
                key_id TEXT
            )""",
            "CREATE INDEX claim_tokens_store ON claim_tokens (store_id)",
            # The cloud's signing keys, version 1 first; each later one with its announcement
            # (signed by the key before it), sent down to the edges.
            """CREATE TABLE cloud_keys (
                version INTEGER PRIMARY KEY,
                key_id TEXT NOT NULL UNIQUE,
                public_key BLOB NOT NULL UNIQUE,
                announcement BLOB,
                overlap_ms INTEGER NOT NULL,
                created_at INTEGER NOT NULL
            )""",
        ),
    ),
    Migration(
        "0006_loyalty_ops",
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
    Migration(
        "0007_brand_counters",
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
        "0008_inbox",
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
        "0009_reports",
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
    *IDENTITY_MIGRATIONS,
)
