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

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from protocol import Program

from .claims_model import ClaimRows, ClaimState, PortalClaim
from .csv_rows import CsvFile
from .csv_store import CsvResult
from .engagement_model import (
    ConsentRecord,
    MessageContact,
    MessageRecord,
    MessageResult,
    OtpChallenge,
    OutboxMessage,
    PortalEnrollment,
    PortalSession,
)
from .erasure import ErasureRecord
from .merges import Collision, MergeRecord, MergeSummary
from .model import (
    AdjustmentRecord,
    BalanceMismatch,
    BatchCommit,
    BatchOutcome,
    BrandRecord,
    ChainCheckpoint,
    ChainHead,
    Claim,
    ConflictRecord,
    CustomerState,
    DownlinkPage,
    ExpirySummary,
    InboxBatch,
    KeyRecord,
    LedgerEntry,
    LedgerState,
    LiabilityRow,
    MismatchRecord,
    OperatorRecord,
    Received,
    ShortfallRecord,
    StoreRecord,
    StoreSync,
)
from .sql import Row
from .store_keys_model import ClaimedStore, ClaimTokenRecord, CloudKeyRecord, RotatedKey


class LedgerTx(Protocol):
    """A write transaction on the ledger; commits when its context exits cleanly."""

    async def chain_head(self, store_id: str) -> ChainHead | None:
        """The store's applied head, its row locked until the transaction ends."""
        ...

    async def claim_batches(self, limit: int) -> list[Claim]:
        """Up to ``limit`` of the oldest inbox batches, in the order to apply them: each next in
        its store's chain, one brand's, their stores locked (skipping stores another transaction
        holds). Empty if there is none."""
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

    async def load_programs(self, brand_id: str, versions: Sequence[int]) -> Mapping[int, Program]:
        """The brand's program at each of ``versions`` (the ones that exist)."""
        ...

    async def save_rows(self, outcome: BatchOutcome) -> None:
        """The outcome's rows that carry no version: ops, sales, ledger entries, conflicts,
        mismatches, shortfalls."""
        ...

    async def find_collisions(self, brand_id: str, customer_ids: Sequence[str]) -> list[Collision]:
        """Card codes and phones these customers share with another live profile of the brand
        (``merges.find_collisions``): read in the batch's transaction, so no extra one is opened."""
        ...

    async def take_versions(self, brand_id: str, count: int) -> int:
        """Lock the brand's change counter until the transaction ends and move it ``count``
        on; the value it had (the batch's versions are that plus 1..count)."""
        ...

    async def save_batch(self, commit: BatchCommit) -> None:
        """The customers (with their final versions), the batch's messages and consents,
        the batch and its ack, the store's applied head; the batch leaves the inbox."""
        ...

    async def load_claims(self, store_id: str, customer_ids: Sequence[str], sale_ids: Sequence[str]) -> ClaimState:
        """The store's unclaimed sales among ``sale_ids`` (locked) and the customers' card runs."""
        ...

    async def save_claims(self, brand_id: str, rows: ClaimRows) -> None: ...


class PortalTx(Protocol):
    """A write transaction for the portal's sign-in codes and attempt counters (``otp``)."""

    async def challenge(self, challenge_id: str) -> OtpChallenge | None:
        """The challenge, locked until the transaction ends."""

    async def save_challenge(self, challenge: OtpChallenge) -> None:
        """Insert, or update its tries and used_at."""

    async def count(self, key: str, window_start: int, add: int) -> int:
        """Add ``add`` to the counter ``key`` in the window starting at ``window_start``
        (a newer window starts from zero) and return its value; ``add=0`` reads it."""


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

    async def peek_inbox(self, limit: int = 1) -> list[Claim]: ...

    async def note_pull(self, store_id: str, now: int) -> None: ...

    # ---- reads
    async def find_key(self, key_id: str) -> KeyRecord | None: ...

    async def downlink_page(self, brand_id: str, cursor: int, limit: int) -> DownlinkPage: ...

    async def current_program(self, brand_id: str) -> Program | None: ...

    async def list_brands(self) -> list[BrandRecord]: ...

    async def list_stores(self) -> list[StoreRecord]: ...

    async def list_store_sync(self, brand_id: str | None = None) -> list[StoreSync]: ...

    async def list_conflicts(self, store_id: str | None = None) -> list[ConflictRecord]: ...

    async def list_mismatches(self, store_id: str | None = None) -> list[MismatchRecord]:
        """Ops applied as the edge computed them while the cloud computed otherwise."""
        ...

    async def list_shortfalls(self, store_id: str | None = None) -> list[ShortfallRecord]:
        """Reversals the refund policy clamped at zero or took below zero."""
        ...

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

    # ---- enrollment, key rotation and revocation (store_keys_store.SqlStoreKeys; KeyRefused for a requester)
    async def add_store_to_claim(
        self, store_id: str, brand_id: str, token_hash: bytes, expires_at: int, now: int
    ) -> StoreRecord: ...

    async def new_claim_token(self, store_id: str, token_hash: bytes, expires_at: int, now: int) -> None: ...

    async def claim_tokens(self, store_id: str) -> list[ClaimTokenRecord]: ...

    async def claim_store(self, token_hash: bytes, public_key: bytes, now: int) -> ClaimedStore: ...

    async def rotate_store_key(
        self, store_id: str, old_key_id: str, public_key: bytes, old_key_expires_at: int, now: int
    ) -> RotatedKey: ...

    async def store_keys(self, store_id: str) -> list[KeyRecord]: ...

    async def set_key_expiry(self, store_id: str, expires_at: int) -> list[KeyRecord]: ...

    async def revoke_store(self, store_id: str, reason: str, now: int) -> StoreRecord: ...

    async def cloud_keys(self) -> list[CloudKeyRecord]: ...

    async def add_cloud_key(self, record: CloudKeyRecord) -> CloudKeyRecord: ...

    # ---- operators of the admin API (tokens are stored as their SHA-256 only)
    async def add_operator(
        self, operator_id: str, name: str, brand_id: str | None, token_hash: bytes, now: int
    ) -> OperatorRecord: ...

    async def find_operator(self, token_hash: bytes) -> OperatorRecord | None: ...

    async def list_operators(self) -> list[OperatorRecord]: ...

    async def revoke_operator(self, operator_id: str, now: int) -> OperatorRecord: ...

    # ---- messages (see cloud/messages.py and cloud/dispatcher.py)
    async def add_messages(self, messages: Sequence[OutboxMessage]) -> int:
        """Write messages in a transaction of their own; a dedupe key already stored is kept.
        Returns how many were new. (In another transaction: ``engagement_store.insert_messages``.)"""

    async def claim_messages(self, now: int, limit: int, lease_ms: int, claim_token: str) -> list[MessageRecord]:
        """Due messages (pending and due, or sending with an expired lease), marked sending under
        ``claim_token`` until ``now + lease_ms``; no two claims get the same message at once."""

    async def finish_messages(self, claim_token: str, results: Sequence[tuple[int, MessageResult]]) -> int:
        """Record how claimed messages (by id) ended, in one transaction; how many were recorded
        (a message whose claim was lost, its lease over and taken again, is left alone)."""

    async def message_contacts(self, customer_ids: Sequence[str]) -> dict[str, MessageContact]:
        """Where messages to these customers may go now: addresses and consented channels
        (a customer not found is left out)."""

    async def list_messages(self, customer_id: str | None = None) -> list[MessageRecord]: ...

    async def record_consent(self, record: ConsentRecord) -> None: ...

    async def consent_history(self, customer_id: str) -> list[ConsentRecord]: ...

    # ---- the self-enrollment portal (see cloud/portal/)
    async def find_customer(self, brand_id: str, *, phone: str | None = None,
                            email: str | None = None) -> CustomerState | None: ...

    async def get_customer(self, customer_id: str) -> CustomerState | None: ...

    async def customer_entries(self, customer_id: str) -> list[LedgerEntry]: ...

    async def enroll_customer(self, enrollment: PortalEnrollment, signup_bonus: int,
                              bonus_op_id: str) -> tuple[CustomerState, bool]:
        """Create the customer (next change version, consents, signup bonus, welcome message) in one
        transaction, or return the brand's customer with that phone or email (False: not created)."""

    def portal_tx(self) -> AbstractAsyncContextManager[PortalTx]: ...

    async def create_session(self, session: PortalSession) -> None: ...

    async def find_session(self, token_hash: str, now: int) -> PortalSession | None:
        """The session if it exists and has not expired at ``now``."""

    async def delete_session(self, token_hash: str) -> None: ...

    async def prune_portal(self, now: int, limit_window_ms: int) -> int:
        """Delete expired codes and sessions and stale counters; how many rows went."""

    # ---- balance changes made in the cloud (each goes down to the edges as a new customer version)
    async def adjust_balance(
        self, brand_id: str, customer_id: str, points: int, reason: str, actor: str, now: int,
        operator_id: str | None = None,
    ) -> AdjustmentRecord: ...

    async def claim_sale(self, brand_id: str, code_hash: str, customer_id: str, now: int) -> PortalClaim:
        """The portal's claim of a receipt, once (``claims_store.portal_claim``; ClaimRefused otherwise)."""
        ...
    async def erase_customer(
        self, brand_id: str, customer_id: str, actor: str, reason: str, now: int,
        operator_id: str | None = None, contact_hashes: Sequence[str] = (),
    ) -> ErasureRecord:
        """Erase the customer's personal data (``cloud.erasure``): one transaction, then the
        backend reclaims the old bytes it can; NotFound, or AlreadyExists (``already_erased``)."""

    async def reclaim(self, tables: Sequence[str]) -> None:
        """After an erasure, make the old bytes of ``tables`` go where the backend can (SQLite:
        truncate the WAL; PostgreSQL: VACUUM); outside any transaction."""

    # ---- duplicate profiles (cloud/merges.py)
    async def merge_duplicates(self, now: int, *, brand_id: str | None = None,
                               customer_ids: Sequence[str] | None = None, actor: str = "periodic") -> MergeSummary:
        """Merge profiles sharing a card code or phone into the older one; idempotent."""
        ...

    async def list_merges(self, brand_id: str) -> list[MergeRecord]: ...

    async def run_expiry(self, now: int) -> ExpirySummary:
        """Expire every point due at ``now``; idempotent, safe to run twice or to interrupt."""
        ...

    # ---- merchant CSV files (csv_rows parses, csv_store applies)
    async def apply_csv(self, brand_id: str, file: CsvFile, actor: str, now: int, *,
                        operator_id: str | None = None, reason: str | None = None) -> CsvResult:
        """Apply a parsed file whole in one transaction (each changed customer takes a new version),
        or change nothing: ``CsvRejected`` lists every bad row; the same rows twice is ``Refused``."""
        ...

    async def export_balances(self, brand_id: str) -> list[Row]:
        """(customer_id, card_code, balance, opted_out, name, phone, email) per customer, one snapshot."""
        ...
