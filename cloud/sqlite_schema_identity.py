"""SQLite DDL of the customer-identity features, migrations 0010 on: merchant CSV
files, receipt claims and card links, duplicate merges, erasure (append only, never edit one).

Kept apart from ``sqlite_schema`` (the ledger's core) only to keep each file readable;
``sqlite_schema.MIGRATIONS`` lists these after its own, in order.
"""

from __future__ import annotations

from .migrations import Migration

IDENTITY_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "0010_merchant_csv",
        (
            # Merchant CSV files applied to a brand, by the digest of their rows: the same rows are
            # refused a second time, so an import never counts twice.
            """CREATE TABLE csv_files (
                brand_id TEXT NOT NULL REFERENCES brands(brand_id),
                kind TEXT NOT NULL,
                digest TEXT NOT NULL,
                sha256 TEXT NOT NULL,
                row_count INTEGER NOT NULL,
                created INTEGER NOT NULL,
                changed INTEGER NOT NULL,
                points INTEGER NOT NULL,
                actor TEXT NOT NULL,
                operator_id TEXT,
                reason TEXT,
                at INTEGER NOT NULL,
                PRIMARY KEY (brand_id, kind, digest)
            )""",
            # The file and line each of a file's ledger entries came from (one entry per line, ever).
            "ALTER TABLE adjustments ADD COLUMN csv_digest TEXT",
            "ALTER TABLE adjustments ADD COLUMN csv_line INTEGER",
            "CREATE UNIQUE INDEX adjustments_csv_line ON adjustments (csv_digest, csv_line)"
            " WHERE csv_digest IS NOT NULL",
        ),
    ),
    Migration(
        "0011_identity_claims",
        (
            # Sales recorded without a profile (an UnclaimedSale op), found by the SHA-256 of their
            # claim code (the code is never stored); customer_id is set once, by the one claim applied.
            """CREATE TABLE claimable_sales (
                code_hash TEXT PRIMARY KEY,
                brand_id TEXT NOT NULL,
                store_id TEXT NOT NULL,
                sale_id TEXT NOT NULL,
                op_id TEXT NOT NULL,
                amount INTEGER NOT NULL,
                program_version INTEGER NOT NULL,
                sale BLOB NOT NULL,
                at INTEGER NOT NULL,
                expires_at INTEGER NOT NULL,
                customer_id TEXT,
                claim_op_id TEXT,
                claimed_at INTEGER,
                claimed_via TEXT,
                points INTEGER,
                UNIQUE (store_id, sale_id)
            )""",
            # A processor's card token linked to a profile (never a card number), and each
            # profile's last card payment token (protocol.claims.card_step).
            """CREATE TABLE card_links (
                brand_id TEXT NOT NULL,
                token TEXT NOT NULL,
                customer_id TEXT NOT NULL UNIQUE,
                linked_at INTEGER NOT NULL,
                PRIMARY KEY (brand_id, token)
            )""",
            """CREATE TABLE card_streaks (
                customer_id TEXT PRIMARY KEY,
                last_token TEXT
            )""",
        ),
    ),
    Migration(
        "0012_identity_merge",
        (
            # Duplicate profiles (one card code or phone given to two new profiles offline) are
            # merged into the older one (cloud/merges.py): the duplicate stays as a tombstone
            # naming its survivor, and every merge is audited.
            "ALTER TABLE customers ADD COLUMN merged_into TEXT",
            "CREATE INDEX customers_merged_into ON customers (merged_into) WHERE merged_into IS NOT NULL",
            "CREATE INDEX customers_brand_card ON customers (brand_id, card_code) WHERE card_code IS NOT NULL",
            """CREATE TABLE merges (
                merge_id TEXT PRIMARY KEY,
                brand_id TEXT NOT NULL REFERENCES brands(brand_id),
                survivor_id TEXT NOT NULL,
                duplicate_id TEXT NOT NULL,
                reason TEXT NOT NULL,
                survivor_balance_before INTEGER NOT NULL,
                duplicate_balance_before INTEGER NOT NULL,
                at INTEGER NOT NULL,
                actor TEXT NOT NULL
            )""",
            "CREATE UNIQUE INDEX merges_duplicate ON merges (duplicate_id)",
            "CREATE INDEX merges_brand_at ON merges (brand_id, at)",
        ),
    ),
    Migration(
        "0013_erasure",
        (
            # When the customer's personal data was erased (NULL: never). The row stays, anonymous:
            # its ledger entries, sales and balance keep pointing at it.
            "ALTER TABLE customers ADD COLUMN erased_at INTEGER",
            # Who erased whom, when and why: ids and the operator's words only, never the erased data.
            """CREATE TABLE erasures (
                id INTEGER PRIMARY KEY,
                brand_id TEXT NOT NULL,
                customer_id TEXT NOT NULL,
                version INTEGER NOT NULL,
                actor TEXT NOT NULL,
                reason TEXT NOT NULL,
                operator_id TEXT,
                at INTEGER NOT NULL
            )""",
            "CREATE UNIQUE INDEX erasures_customer ON erasures (customer_id)",
        ),
    ),
)
