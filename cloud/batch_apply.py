"""Applying the batches a worker claimed, inside its one write transaction.

A step is one batch on PostgreSQL and up to a few under SQLite's single
writer (``worker``). Every batch's state is loaded first; the batches are
then decided in turn, each over what the ones before it left (``_Overlay``: customers, ops,
sales, unclaimed sales, card runs), with versions counted from 0 across the
step, and their rows without versions written. Only then is the brand's
counter taken, once (on PostgreSQL it stays locked until the commit), the
versions moved past it, the acks sealed and the customers and batches
written. A step of one batch is the same path.

Queuing a batch's writes on SQLite's thread while Python
decides the next was also tried: no faster, because that thread needs the
GIL between rows and the deciding loop holds it (CPU time equalled wall time).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from protocol import Ack, Batch, Enroll, MessageType, Op, OpKind, OpStatus, Program, UpdateProfile, encode_ack, seal
from protocol.privacy import redact_batch_body
from protocol.refunds import basis_version

from .claims_model import ClaimableSale, ClaimState
from .erasure import is_erased
from .errors import StoreError
from .keys import CloudKey
from .messages import batch_effects, needs_program
from .model import (
    BatchCommit,
    BatchOutcome,
    Claim,
    CustomerState,
    LedgerState,
    OpRecord,
    SaleState,
    balance_only,
    versioned,
)
from .reconciler import reconcile
from .storage import LedgerTx

#: Batches with none of these ops and no whole-sale earn read and write nothing of claims or card links.
_CLAIM_KINDS = frozenset({OpKind.UNCLAIMED_SALE, OpKind.CLAIM})


@dataclass(frozen=True, slots=True)
class Done:
    """One batch written in a transaction not yet committed: what is left to do once it is."""

    claim: Claim
    ops: int
    ack: bytes
    outcome: BatchOutcome
    named: list[str]  # customers given a card code or phone: look for duplicates of theirs
    redacted: bool  # the batch was stored scrubbed of an erased customer's data


@dataclass(frozen=True, slots=True)
class Sealer:
    """What turns a decided batch into its ack and the rows it commits."""

    cloud_key: CloudKey
    clock: Callable[[], int]

    def seal(self, claim: Claim, batch: Batch, state: LedgerState, programs: Mapping[int, Program],
             outcome: BatchOutcome, now: int) -> tuple[Done, BatchCommit]:
        head = claim.head
        ack = Ack(head.store_id, claim.seq, claim.hash, now, outcome.results, outcome.balances)
        sealed = seal(MessageType.ACK, encode_ack(ack), self.cloud_key.private, self.cloud_key.key_id)
        current = state.program_version
        program = programs.get(current) if current is not None and needs_program(outcome) else None
        effects = batch_effects(outcome, program)
        stored = _stored_body(claim.body, batch.ops, state)
        commit = BatchCommit(
            store_id=head.store_id,
            brand_id=head.brand_id,
            seq=claim.seq,
            prev_seq=head.last_seq,
            hash=claim.hash,
            body=stored,
            ack=sealed,
            at=claim.at,
            received_at=claim.received_at,
            outcome=outcome,
            messages=effects.messages,
            consents=effects.consents,
            balance_only=balance_only(state.customers, outcome.customers),
        )
        named = _identified(batch.ops, outcome, state.merged)
        return Done(claim, len(batch.ops), sealed, outcome, named, stored is not claim.body), commit


async def apply_step(tx: LedgerTx, claimed: Sequence[tuple[Claim, Batch]], sealer: Sealer) -> list[Done]:
    """Decide and write one brand's claimed batches, in order, inside the caller's transaction."""
    if not claimed:
        return []
    brand_id = claimed[0][0].head.brand_id
    loaded = [await _load(tx, claim, batch) for claim, batch in claimed]
    wanted = set().union(*(program_versions(batch.ops, state) for (_, batch), state in zip(claimed, loaded,
                                                                                              strict=True)))
    programs = await tx.load_programs(brand_id, sorted(wanted))
    overlay = _Overlay()
    decided = []
    counter = 0  # versions count from 0 across the step, moved past the brand's counter at the end
    for (claim, batch), read in zip(claimed, loaded, strict=True):
        state = overlay.over(read, claim.head.store_id, counter)
        now = sealer.clock()
        outcome = reconcile(store_id=claim.head.store_id, brand_id=brand_id, seq=claim.seq, ops=batch.ops,
                            state=state, now=now, programs=programs)
        counter = outcome.counter
        overlay.add(claim.head.store_id, outcome)
        await tx.save_rows(outcome)
        await tx.save_claims(brand_id, outcome.claim_rows)
        decided.append((claim, batch, state, outcome, now))
    # Last, and only if the step changed someone: the brand's counter, locked to commit (PostgreSQL),
    # so the brand's other workers wait for it only while the customers and acks are written.
    base = await tx.take_versions(brand_id, counter) if counter else 0
    counted: set[str] = set()  # customers whose versions this step handed out, so far
    done = []
    for claim, batch, state, outcome, now in decided:
        counted.update(c.customer_id for c in outcome.customers)
        one, commit = sealer.seal(claim, batch, state, programs, versioned(outcome, base, counted), now)
        await tx.save_batch(commit)
        done.append(one)
    return [await _collisions(tx, one) for one in done]


class _Overlay:
    """What the batches decided so far in a step left, over a later batch's loaded state."""

    def __init__(self) -> None:
        self.customers: dict[str, CustomerState] = {}
        self.ops: dict[str, OpRecord] = {}
        self.sales: dict[str, dict[str, SaleState]] = {}  # by store, by sale_id
        self.claimables: dict[str, dict[str, ClaimableSale]] = {}  # by store, by sale_id
        self.streaks: dict[str, str | None] = {}

    def over(self, state: LedgerState, store_id: str, counter: int) -> LedgerState:
        if not self.customers and not self.ops:
            return dataclasses.replace(state, counter=counter)
        sales = self.sales.get(store_id, {})
        claimables = self.claimables.get(store_id, {})
        return dataclasses.replace(
            state,
            counter=counter,
            customers={**state.customers, **self.customers},
            sales={**state.sales, **sales} if sales else state.sales,
            ops={**state.ops, **self.ops},
            claims=ClaimState({**state.claims.claimables, **claimables}, {**state.claims.streaks, **self.streaks})
            if claimables or self.streaks else state.claims,
        )

    def add(self, store_id: str, outcome: BatchOutcome) -> None:
        self.customers.update((c.customer_id, c) for c in outcome.customers)
        self.ops.update((r.op_id, r) for r in outcome.ops)
        self.sales.setdefault(store_id, {}).update((s.sale_id, s) for s in outcome.sales)
        rows = outcome.claim_rows
        self.claimables.setdefault(store_id, {}).update(
            (c.sale_id, c) for c in rows.claimables if c.store_id == store_id)
        self.streaks.update(rows.streaks)


async def _load(tx: LedgerTx, claim: Claim, batch: Batch) -> LedgerState:
    head = claim.head
    if (batch.store_id, batch.seq, batch.prev_hash) != (head.store_id, claim.seq, head.last_hash):
        raise StoreError(f"inbox batch {claim.seq} of store {head.store_id} does not follow its chain")
    ops = batch.ops
    state = await tx.load_state(
        brand_id=head.brand_id,
        store_id=head.store_id,
        op_ids=[op.op_id for op in ops],
        customer_ids=[op.customer_id for op in ops],
        sale_ids=[sid for op in ops if isinstance(sid := getattr(op, "sale_id", None), str)],
    )
    if any(op.kind in _CLAIM_KINDS or getattr(op, "sale", None) is not None for op in ops):
        state = dataclasses.replace(state, claims=await tx.load_claims(
            head.store_id, [op.customer_id for op in ops], [getattr(op, "sale_id", "") for op in ops]))
    return state


async def _collisions(tx: LedgerTx, one: Done) -> Done:
    """Keep the customers to merge only if their new card code or phone is another profile's."""
    if one.named and await tx.find_collisions(one.claim.head.brand_id, one.named):
        return one
    return dataclasses.replace(one, named=[]) if one.named else one


def _identified(ops: tuple[Op, ...], outcome: BatchOutcome, merged: Mapping[str, str]) -> list[str]:
    """Customers the batch applied a card code or phone to (enrolled, or changed; a merged id's survivor)."""
    applied = {r.op_id for r in outcome.results if r.status is OpStatus.APPLIED}
    return [merged.get(op.customer_id, op.customer_id) for op in ops
            if isinstance(op, Enroll | UpdateProfile) and (op.card_code or op.phone) and op.op_id in applied]


def program_versions(ops: tuple[Op, ...], state: LedgerState) -> set[int]:
    """The program versions a batch needs: those its ops name, its sales' earns were rated with, the current."""
    versions = {v for op in ops if isinstance(v := getattr(op, "program_version", None), int)}
    versions.update(basis_version(s.basis) for s in state.sales.values() if s.basis is not None)
    if state.program_version is not None:
        versions.add(state.program_version)
    return versions


def _stored_body(body: bytes, ops: Sequence[Op], state: LedgerState) -> bytes:
    """The batch as kept: scrubbed of the personal data of customers erased before it was
    applied (a late op from an offline edge), so an erasure is never undone by a resend."""
    erased = {cid for cid, c in state.customers.items() if is_erased(c.consent)}
    if not erased or not any(op.customer_id in erased for op in ops):
        return body
    return redact_batch_body(body, erased) or body
