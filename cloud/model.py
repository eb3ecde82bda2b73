"""Plain records shared by the storage backends and the pure reconciler.

Rows are frozen dataclasses with no behaviour: a backend fills them from its
own dialect and the reconciler reads them, so neither knows about the other.
Times are integer milliseconds since the epoch.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocol import Balance, OpResult, Program

from .claims_model import ClaimRows, ClaimState
from .engagement_model import ConsentRecord, OutboxMessage

#: The store_id of ledger entries the cloud makes itself (expiry, an operator's
#: adjustment): not a slug, so it can never be a store's.
CLOUD_ORIGIN = "(cloud)"


@dataclass(frozen=True, slots=True)
class BrandRecord:
    brand_id: str
    name: str
    created_at: int


@dataclass(frozen=True, slots=True)
class OperatorRecord:
    """A user of the admin API: every brand when ``brand_id`` is None, else that brand only."""

    operator_id: str
    name: str
    brand_id: str | None
    created_at: int
    revoked_at: int | None


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A store's signing key, with the store and brand it speaks for."""

    key_id: str
    store_id: str
    brand_id: str
    public_key: bytes
    created_at: int
    revoked_at: int | None
    #: After a rotation: when the overlap window ends, and the key that replaced this one.
    expires_at: int | None = None
    replaced_by: str | None = None
    #: The store's own revocation, which refuses every key of it.
    store_revoked_at: int | None = None
    store_revoke_reason: str | None = None


@dataclass(frozen=True, slots=True)
class StoreRecord:
    store_id: str
    brand_id: str
    last_seq: int
    last_hash: bytes
    created_at: int
    key_ids: tuple[str, ...]
    revoked_at: int | None = None
    revoke_reason: str | None = None


@dataclass(frozen=True, slots=True)
class StoreSync:
    """A store's chain heads (as received, as applied) and when it was last heard from."""

    store_id: str
    brand_id: str
    created_at: int
    applied_seq: int
    received_seq: int
    last_batch_at: int | None
    last_pull_at: int | None

    @property
    def last_heard_at(self) -> int | None:
        """The later of the last batch and the last pull (pulls are noted once a minute)."""
        times = [t for t in (self.last_batch_at, self.last_pull_at) if t is not None]
        return max(times) if times else None

    def silent_since(self) -> int:
        """Since when the store has been silent: its last contact, else its registration."""
        heard = self.last_heard_at
        return self.created_at if heard is None else heard


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The last batch applied for a store (seq 0 and GENESIS_HASH before any)."""

    store_id: str
    brand_id: str
    last_seq: int
    last_hash: bytes


@dataclass(frozen=True, slots=True)
class InboxBatch:
    """A verified batch as received: stored before it is applied."""

    store_id: str
    seq: int
    hash: bytes
    prev_hash: bytes
    body: bytes
    at: int
    received_at: int


class Receipt(enum.Enum):
    """What receiving a batch found."""

    QUEUED = "queued"  # the next batch of the chain: now in the inbox
    PENDING = "pending"  # the same bytes are already in the inbox, not applied yet
    APPLIED = "applied"  # the same bytes were applied; ``ack`` is the stored ack
    CONFLICT = "conflict"  # that sequence number holds other content
    GAP = "gap"  # beyond the next sequence number
    CHAIN_BROKEN = "chain_broken"  # prev_hash is not the hash of the batch before


@dataclass(frozen=True, slots=True)
class Received:
    receipt: Receipt
    expected: int  # the sequence number the store's next new batch must carry
    ack: bytes | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """An inbox batch a reconciler took, with its store's applied head (locked until commit)."""

    head: ChainHead
    seq: int
    hash: bytes
    body: bytes
    at: int
    received_at: int


@dataclass(frozen=True, slots=True)
class CustomerState:
    customer_id: str
    brand_id: str
    name: str
    phone: str | None
    email: str | None
    card_code: str | None
    consent: str  # JSON text, written once at enrollment
    balance: int
    version: int
    enrolled_store: str
    created_at: int
    updated_at: int
    groups: str = "[]"  # JSON list, sorted: what zero-earning rules match on
    opted_out: bool = False


@dataclass(frozen=True, slots=True)
class SaleState:
    """What the cloud applied on one sale of one store.

    ``basis`` is the earn's ``protocol.refunds.EarnBasis`` (None for an
    amount-only earn); ``returned`` is JSON {line_id: quantity} of every
    refund applied; ``earn_reversed`` and ``redeem_returned`` are what those
    refunds took back and gave back, so a void reverses only what is left.
    """

    store_id: str
    sale_id: str
    customer_id: str
    earned: int
    redeemed: int
    voided_by: str | None
    voided_at: int | None
    basis: bytes | None = None
    returned: str = "{}"
    earn_reversed: int = 0
    redeem_returned: int = 0


@dataclass(frozen=True, slots=True)
class OpRecord:
    """One op's final result, kept forever so that a resent op is never re-applied."""

    op_id: str
    digest: bytes
    store_id: str
    seq: int
    kind: str
    terminal_id: str
    customer_id: str
    status: str
    code: str | None
    points: int
    program_version: int | None
    note: str | None
    at: int
    created_at: int


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    customer_id: str
    op_id: str
    store_id: str
    sale_id: str | None
    kind: str
    points: int
    at: int


@dataclass(frozen=True, slots=True)
class ConflictRecord:
    """A debit the cloud refused because the confirmed balance could not cover it."""

    store_id: str
    terminal_id: str
    customer_id: str
    op_id: str
    kind: str
    points_requested: int
    balance_available: int
    at: int
    created_at: int


@dataclass(frozen=True, slots=True)
class MismatchRecord:
    """An op the cloud applied as the edge computed it, while its own
    computation gave another number (``cloud_points`` None: it could not
    compute, e.g. an unknown program version). For refunds and voids the
    points are the net change before the refund policy."""

    store_id: str
    op_id: str
    customer_id: str
    sale_id: str | None
    kind: str
    program_version: int | None
    edge_points: int
    cloud_points: int | None
    reason: str
    at: int
    created_at: int


@dataclass(frozen=True, slots=True)
class ShortfallRecord:
    """A reversal the refund policy could not take in full (``clamp``: the
    points not taken back) or took below zero (``negative``: how far)."""

    store_id: str
    op_id: str
    customer_id: str
    sale_id: str
    kind: str
    policy: str
    points: int
    balance_after: int
    at: int
    created_at: int


@dataclass(frozen=True, slots=True)
class AdjustmentRecord:
    """An operator's manual adjustment in the cloud, with its ledger entry's op id."""

    op_id: str
    brand_id: str
    customer_id: str
    points: int
    reason: str
    actor: str
    operator_id: str | None
    balance_after: int
    version: int
    at: int


@dataclass(frozen=True, slots=True)
class ExpirySummary:
    """What one expiry run did (every brand whose program sets an expiry)."""

    brands: int
    customers_checked: int
    customers_expired: int
    points_expired: int


@dataclass(frozen=True, slots=True)
class LedgerState:
    """Everything a batch's ops can read, loaded in a few set-based queries."""

    program_version: int | None
    counter: int  # versions are handed out from here; the storage loads 0 (see ``versioned``)
    customers: Mapping[str, CustomerState]  # by customer_id, any brand
    sales: Mapping[str, SaleState]  # by sale_id, this store only
    ops: Mapping[str, OpRecord]  # by op_id, ops already applied or refused
    claims: ClaimState = field(default_factory=ClaimState)  # loaded apart (LedgerTx.load_claims)
    #: Merged (tombstone) customer_id -> its survivor, for the ids the batch names (cloud/merges.py).
    merged: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What applying a batch decided: the answers and every row to write."""

    results: tuple[OpResult, ...]
    balances: tuple[Balance, ...]
    ops: tuple[OpRecord, ...]
    customers: tuple[CustomerState, ...]  # inserted or changed, final state
    sales: tuple[SaleState, ...]  # inserted or changed, final state
    entries: tuple[LedgerEntry, ...]
    conflicts: tuple[ConflictRecord, ...]
    counter: int
    mismatches: tuple[MismatchRecord, ...] = ()
    shortfalls: tuple[ShortfallRecord, ...] = ()
    claim_rows: ClaimRows = field(default_factory=ClaimRows)


def versioned(outcome: BatchOutcome, base: int, counted: Collection[str] = ()) -> BatchOutcome:
    """The outcome of a batch decided from counter 0, with the versions it handed out (1..n)
    moved past ``base``, the brand's counter. Deciding first and taking the counter last keeps
    the counter's lock (and with it the brand's batches in a row) as short as it can be.
    ``counted``: customers an earlier batch of the same step changed (their versions in this
    batch's balances are counted from 0 too)."""
    if base == 0:
        return outcome
    customers = tuple(
        # Field by field: dataclasses.replace costs several times as much, on every customer of a batch.
        CustomerState(c.customer_id, c.brand_id, c.name, c.phone, c.email, c.card_code, c.consent, c.balance,
                      c.version + base, c.enrolled_store, c.created_at, c.updated_at, c.groups, c.opted_out)
        for c in outcome.customers
    )
    changed = {c.customer_id for c in customers}.union(counted)
    return BatchOutcome(
        outcome.results,
        tuple(
            Balance(b.customer_id, b.points, b.version + base) if b.customer_id in changed else b
            for b in outcome.balances
        ),
        outcome.ops,
        customers,
        outcome.sales,
        outcome.entries,
        outcome.conflicts,
        outcome.counter + base,
        outcome.mismatches,
        outcome.shortfalls,
        outcome.claim_rows,
    )


@dataclass(frozen=True, slots=True)
class BatchCommit:
    """A batch to store with its outcome and the sealed ack that answers it."""

    store_id: str
    brand_id: str
    seq: int
    prev_seq: int
    hash: bytes
    body: bytes
    ack: bytes
    at: int
    received_at: int
    outcome: BatchOutcome
    #: Written in the same transaction (see ``messages.batch_effects``); a message already there is kept.
    messages: tuple[OutboxMessage, ...] = ()
    consents: tuple[ConsentRecord, ...] = ()
    #: The outcome's customers of whom only the balance, version and update time changed
    #: (``balance_only``): a backend writes just those columns, and no index of the profile.
    balance_only: frozenset[str] = frozenset()


#: What a balance change leaves as it was: every column but balance, version and updated_at.
_PROFILE_AT = tuple(i for i, f in enumerate(dataclasses.fields(CustomerState))
                    if f.name not in ("balance", "version", "updated_at"))


def balance_only(before: Mapping[str, CustomerState], after: Sequence[CustomerState]) -> frozenset[str]:
    """The customers of ``after`` that ``before`` holds with the same profile: only their balance,
    version and update time changed (most of a batch's: earns and redemptions)."""
    same = []
    for customer in after:
        old = before.get(customer.customer_id)
        if old is not None:
            new_row, old_row = astuple(customer), astuple(old)
            if all(new_row[i] == old_row[i] for i in _PROFILE_AT):
                same.append(customer.customer_id)
    return frozenset(same)


@dataclass(frozen=True, slots=True)
class DownlinkPage:
    """Customers changed after a cursor plus the brand's counter and program, one snapshot."""

    customers: tuple[CustomerState, ...]
    counter: int
    program: Program | None
    #: customer_id -> (expires_at, points) of upcoming expiries (empty without an expiry policy)
    expiring: Mapping[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    card_tokens: Mapping[str, str] = field(default_factory=dict)  # customer_id -> linked card token
    #: customer_id -> survivor of the page's tombstones (merged duplicates)
    merged: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BalanceMismatch:
    """A customer whose balance is not the sum of their ledger entries."""

    customer_id: str
    balance: int
    entries_total: int


@dataclass(frozen=True, slots=True)
class ChainCheckpoint:
    """A store's applied head and how far the integrity audit has checked its batch chain."""

    store_id: str
    last_seq: int
    last_hash: bytes
    checked_seq: int  # 0 and GENESIS_HASH before the first audit
    checked_hash: bytes


@dataclass(frozen=True, slots=True)
class LiabilityRow:
    """Outstanding points of a brand (``store_id`` None) or of the entries a store's ops made."""

    day: str  # UTC date the snapshot stands for, YYYY-MM-DD
    brand_id: str
    store_id: str | None
    points: int
    value: int | None  # minor units through the program's point_value; None without one
    taken_at: int


_ROW_GETTERS: dict[type, Callable[[Any], tuple[Any, ...]]] = {}


def astuple(obj: Any) -> tuple[Any, ...]:
    """A record's fields in declaration order, which is the column order of its table in every backend."""
    getter = _ROW_GETTERS.get(type(obj))
    if getter is None:
        getter = _ROW_GETTERS[type(obj)] = operator.attrgetter(*(f.name for f in dataclasses.fields(obj)))
    row: tuple[Any, ...] = getter(obj)
    return row


# ---- row mapping shared by the backends (the SQL differs, the rows do not)

Row = tuple[Any, ...]


#: The customers table's columns, in CustomerState's field order.
CUSTOMER_COLUMNS = (
    "customer_id, brand_id, name, phone, email, card_code, consent, balance, version,"
    " enrolled_store, created_at, updated_at, groups, opted_out"
)


def customer_from_row(row: Row) -> CustomerState:
    """A customers row in column order (SQLite gives opted_out as 0/1)."""
    return CustomerState(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], row[10],
                         row[11], row[12], bool(row[13]))


def sale_from_row(row: Row) -> SaleState:
    basis = None if row[7] is None else bytes(row[7])
    return SaleState(row[0], row[1], row[2], row[3], row[4], row[5], row[6], basis, row[8], row[9], row[10])


def program_from_row(row: Row | None) -> Program | None:
    """(brand_id, version, name, points_per_unit, unit_amount, settings)."""
    return None if row is None else Program(row[0], row[1], row[2], row[3], row[4], row[5])


def key_from_row(row: Row) -> KeyRecord:
    """(key_id, store_id, brand_id, public_key, created_at, revoked_at, expires_at, replaced_by,
    store revoked_at, store revoke_reason): ``ledger.KEY_SELECT``."""
    return KeyRecord(row[0], row[1], row[2], bytes(row[3]), *row[4:10])


def stores_from_rows(stores: list[Row], keys: list[Row]) -> list[StoreRecord]:
    """Stores (store_id, brand_id, last_seq, last_hash, created_at, revoked_at, revoke_reason)
    with their key ids from (store_id, key_id) rows, in the order given."""
    by_store: dict[str, list[str]] = {}
    for store_id, key_id in keys:
        by_store.setdefault(store_id, []).append(key_id)
    return [StoreRecord(r[0], r[1], r[2], bytes(r[3]), r[4], tuple(by_store.get(r[0], ())), *r[5:7]) for r in stores]


def claims_from_rows(rows: Sequence[Row]) -> list[Claim]:
    """The rows of ``ledger.CLAIM_SELECT`` (store_id, brand_id, last_seq, last_hash, seq, hash,
    body, at, received_at) as batches to apply in this order: one brand's (the
    first row's; a transaction holds one brand counter, so brands never wait for each other in
    a cycle), each store's in its chain from its applied head, every later batch's head being
    the batch before it. A store's row that does not follow on (a clock that went back between
    two receipts) ends that store's run; its next transaction takes it."""
    claims: list[Claim] = []
    heads: dict[str, ChainHead] = {}
    ended: set[str] = set()
    for row in rows:
        store_id = row[0]
        if row[1] != rows[0][1] or store_id in ended:
            continue
        head = heads.get(store_id) or ChainHead(store_id, row[1], row[2], bytes(row[3]))
        if row[4] != head.last_seq + 1:
            ended.add(store_id)
            continue
        claim = Claim(head, row[4], bytes(row[5]), bytes(row[6]), row[7], row[8])
        claims.append(claim)
        heads[store_id] = ChainHead(store_id, head.brand_id, claim.seq, claim.hash)
    return claims
