"""The narrow storage interface the reconciler, the API and the CLI use.

A backend (``sqlite_storage``, ``pg_storage``; ``config.make_storage`` picks
one from the DSN) implements ``Storage``. Batches are applied inside
``batch_tx()``: one write transaction that reads the store's chain head, loads
the batch's state set-based, and writes every row of the outcome in bulk.
It must keep the balance check exact however many batches run at once (one
SQLite writer; row locks on PostgreSQL). Everything dialect-specific stays in
the backend modules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from protocol import Program

from .model import (
    AdjustmentRecord,
    BalanceMismatch,
    BatchCommit,
    BrandRecord,
    ChainHead,
    ConflictRecord,
    DownlinkPage,
    ExpirySummary,
    KeyRecord,
    LedgerState,
    MismatchRecord,
    OperatorRecord,
    ShortfallRecord,
    StoredBatch,
    StoreRecord,
)


class LedgerTx(Protocol):
    """A write transaction on the ledger; commits when its context exits cleanly."""

    async def chain_head(self, store_id: str) -> ChainHead | None: ...

    async def stored_batch(self, store_id: str, seq: int) -> StoredBatch | None: ...

    async def load_state(
        self,
        *,
        brand_id: str,
        store_id: str,
        op_ids: Sequence[str],
        customer_ids: Sequence[str],
        sale_ids: Sequence[str],
    ) -> LedgerState: ...

    async def load_programs(self, brand_id: str, versions: Sequence[int]) -> Mapping[int, Program]:
        """The brand's program at each of ``versions`` (the ones that exist)."""
        ...

    async def save_batch(self, commit: BatchCommit) -> None: ...


class Storage(Protocol):
    async def open(self, now: int) -> None:
        """Connect and apply pending migrations (recorded as applied at ``now``)."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise StoreError unless the database answers a trivial read."""

    def batch_tx(self) -> AbstractAsyncContextManager[LedgerTx]:
        """The write transaction a batch is applied in, isolated from every other batch's."""
        ...

    # ---- reads
    async def find_key(self, key_id: str) -> KeyRecord | None: ...

    async def downlink_page(self, brand_id: str, cursor: int, limit: int) -> DownlinkPage: ...

    async def current_program(self, brand_id: str) -> Program | None: ...

    async def list_brands(self) -> list[BrandRecord]: ...

    async def list_stores(self) -> list[StoreRecord]: ...

    async def list_conflicts(self, store_id: str | None = None) -> list[ConflictRecord]: ...

    async def list_mismatches(self, store_id: str | None = None) -> list[MismatchRecord]:
        """Ops applied as the edge computed them while the cloud computed otherwise."""
        ...

    async def list_shortfalls(self, store_id: str | None = None) -> list[ShortfallRecord]:
        """Reversals the refund policy clamped at zero or took below zero."""
        ...

    async def audit_balances(self) -> list[BalanceMismatch]: ...

    async def applied_migrations(self) -> list[tuple[str, int]]: ...

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

    # ---- balance changes made in the cloud (each goes down to the edges as a new customer version)
    async def adjust_balance(
        self, brand_id: str, customer_id: str, points: int, reason: str, actor: str, now: int,
        operator_id: str | None = None,
    ) -> AdjustmentRecord: ...

    async def run_expiry(self, now: int) -> ExpirySummary:
        """Expire every point due at ``now``; idempotent, safe to run twice or to interrupt."""
        ...
