"""The narrow storage interface the reconciler, the API and the CLI use.

A backend (``sqlite_storage``, ``pg_storage``; ``config.make_storage`` picks
one from the DSN) implements ``Storage``. A batch is first received
(``receive_batch``: checked against the store's received chain and stored in
the inbox), then applied inside ``batch_tx()``: one write transaction that
claims the next inbox batch with its store's applied head, loads the batch's
state set-based, and writes every row of the outcome in bulk. It must keep
the balance check exact however many reconcilers run at once (one SQLite
writer; row locks on PostgreSQL). Everything dialect-specific stays in the
backend modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from protocol import Program

from .model import (
    BalanceMismatch,
    BatchCommit,
    BatchOutcome,
    BrandRecord,
    ChainCheckpoint,
    ChainHead,
    Claim,
    ConflictRecord,
    DownlinkPage,
    InboxBatch,
    KeyRecord,
    LedgerState,
    LiabilityRow,
    OperatorRecord,
    Received,
    StoreRecord,
    StoreSync,
)
from .sql import Row


class LedgerTx(Protocol):
    """A write transaction on the ledger; commits when its context exits cleanly."""

    async def chain_head(self, store_id: str) -> ChainHead | None:
        """The store's applied head, its row locked until the transaction ends."""
        ...

    async def claim_next(self) -> Claim | None:
        """The oldest inbox batch that is next in its store's chain, its store locked
        (skipping stores another transaction holds), or None."""
        ...

    async def load_state(
        self,
        *,
        brand_id: str,
        store_id: str,
        op_ids: Sequence[str],
        customer_ids: Sequence[str],
        sale_ids: Sequence[str],
    ) -> LedgerState: ...

    async def save_rows(self, outcome: BatchOutcome) -> None:
        """The outcome's rows that carry no version: ops, sales, ledger entries, conflicts."""
        ...

    async def take_versions(self, brand_id: str, count: int) -> int:
        """Lock the brand's change counter until the transaction ends and move it ``count``
        on; the value it had (the batch's versions are that plus 1..count)."""
        ...

    async def save_batch(self, commit: BatchCommit) -> None:
        """The customers (with their final versions), the batch and its ack, the store's
        applied head; the batch leaves the inbox."""
        ...


class Storage(Protocol):
    #: One writer at a time (SQLite): workers decode the next batch before they queue for it.
    single_writer: bool

    async def open(self, now: int) -> None:
        """Connect and apply pending migrations (recorded as applied at ``now``)."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise StoreError unless the database answers a trivial read."""

    def batch_tx(self) -> AbstractAsyncContextManager[LedgerTx]:
        """The write transaction a batch is applied in, isolated from every other batch's."""
        ...

    # ---- the inbox
    async def receive_batch(self, batch: InboxBatch) -> Received: ...

    async def applied_acks(self, wanted: list[tuple[str, int]]) -> dict[tuple[str, int], bytes]: ...

    async def inbox_depth(self) -> int: ...

    async def peek_inbox(self) -> Claim | None: ...

    async def note_pull(self, store_id: str, now: int) -> None: ...

    # ---- reads
    async def find_key(self, key_id: str) -> KeyRecord | None: ...

    async def downlink_page(self, brand_id: str, cursor: int, limit: int) -> DownlinkPage: ...

    async def current_program(self, brand_id: str) -> Program | None: ...

    async def list_brands(self) -> list[BrandRecord]: ...

    async def list_stores(self) -> list[StoreRecord]: ...

    async def list_store_sync(self, brand_id: str | None = None) -> list[StoreSync]: ...

    async def list_conflicts(self, store_id: str | None = None) -> list[ConflictRecord]: ...

    async def audit_balances(self) -> list[BalanceMismatch]: ...

    async def applied_migrations(self) -> list[tuple[str, int]]: ...

    # ---- the periodic job (ledger_periodic)
    async def chain_checkpoints(self) -> list[ChainCheckpoint]: ...

    async def chain_page(self, store_id: str, after_seq: int, limit: int) -> list[tuple[int, bytes, bytes]]: ...

    async def save_chain_checkpoint(self, store_id: str, seq: int, hash_: bytes, now: int) -> None: ...

    async def take_liability_snapshot(self, day: str, now: int) -> list[LiabilityRow]: ...

    async def liability_snapshots(self, brand_id: str, first_day: str, last_day: str) -> list[LiabilityRow]: ...

    # ---- reports (ledger_reports): aggregates over [start, end) in milliseconds, one brand
    async def report_enrollment(self, brand_id: str, start: int, end: int) -> list[Row]: ...

    async def report_activity(
        self, brand_id: str, start: int, end: int, period: str, month_starts: Sequence[int]
    ) -> list[Row]: ...

    async def report_points(self, brand_id: str, start: int, end: int) -> list[Row]: ...

    async def report_conflicts(self, brand_id: str, start: int, end: int) -> list[Row]: ...

    # ---- administration (each one transaction; raises ConfigError subclasses)
    async def add_brand(self, brand_id: str, name: str, now: int) -> BrandRecord: ...

    async def set_program(
        self, brand_id: str, name: str, points_per_unit: int, unit_amount: int, now: int, settings: str = "{}"
    ) -> Program: ...

    async def add_store(self, store_id: str, brand_id: str, public_key: bytes, now: int) -> KeyRecord: ...

    async def add_store_key(self, store_id: str, public_key: bytes, now: int) -> KeyRecord: ...

    async def revoke_key(self, key_id: str, now: int) -> KeyRecord: ...

    # ---- operators of the admin API (tokens are stored as their SHA-256 only)
    async def add_operator(
        self, operator_id: str, name: str, brand_id: str | None, token_hash: bytes, now: int
    ) -> OperatorRecord: ...

    async def find_operator(self, token_hash: bytes) -> OperatorRecord | None: ...

    async def list_operators(self) -> list[OperatorRecord]: ...

    async def revoke_operator(self, operator_id: str, now: int) -> OperatorRecord: ...
