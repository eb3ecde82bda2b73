"""The periodic job: ``loyalty-cloud reconcile --periodic``, hourly from loyalty-reconcile.timer.

Steps, in this order (points change first, then they are checked, then counted):

1. ``expire_points``: points expiry, ``Storage.run_expiry(now)`` (what is due
   by each brand's expiry setting, a chunk of customers per transaction);
2. ``merge_duplicates``: profiles of a brand sharing a card code or phone
   merged into the older one, ``Storage.merge_duplicates(now)`` (one
   transaction per merge; see ``merges``);
3. ``audit_balances``: every balance equals the sum of its ledger entries;
4. ``audit_chains``: every store's applied batches are gap-free from 1, each
   body hashes to its stored hash, and each batch names the hash of the one
   before (``prev_hash``); checked from a per-store checkpoint, so each run
   reads only the batches applied since the last (``full`` starts over);
5. ``liability_snapshot``: outstanding points per brand and per store, valued
   with the program's ``point_value``; one snapshot per UTC day, replaced by
   every run that day;
6. ``silent_stores``: stores not heard from (batch or pull) in ``silent_hours``,
   logged as warnings and listed.

Each step is idempotent and safe to interrupt: it reads, or commits whole (a
checkpoint moves only past batches that were checked and found sound), so a
second run finds the same and a killed run leaves nothing half done. A step
that fails is reported and the next still runs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from protocol import GENESIS_HASH, ProtocolError, body_hash, decode_batch
from protocol.privacy import redacted_prev_hash

from .errors import StoreError
from .model import ChainCheckpoint
from .storage import Storage

log = logging.getLogger(__name__)

SILENT_HOURS = 24.0
#: Batches read per query by the chain audit.
CHAIN_PAGE = 200


@dataclass(frozen=True, slots=True)
class StepResult:
    step: str
    ok: bool  # False: the step failed, or found something an operator must look at
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChainProblem:
    store_id: str
    seq: int
    problem: str  # gap, hash_mismatch, undecodable, chain_broken, head_mismatch


@dataclass(frozen=True, slots=True)
class Context:
    storage: Storage
    now: int
    silent_hours: float
    full_audit: bool


Step = Callable[[Context], Awaitable[StepResult]]


def utc_day(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d")


async def expire_points(ctx: Context) -> StepResult:
    summary = await ctx.storage.run_expiry(ctx.now)
    return StepResult("expire_points", True, dataclasses.asdict(summary))


async def merge_duplicates(ctx: Context) -> StepResult:
    """Duplicate profiles merged into the older one; reports how many."""
    summary = await ctx.storage.merge_duplicates(ctx.now)
    return StepResult("merge_duplicates", True, summary.to_json())


async def audit_balances(ctx: Context) -> StepResult:
    mismatches = await ctx.storage.audit_balances()
    for m in mismatches:
        log.error("customer %s: balance %d, ledger entries add up to %d", m.customer_id, m.balance, m.entries_total)
    return StepResult("audit_balances", not mismatches, {
        "mismatches": [{"customer_id": m.customer_id, "balance": m.balance, "entries_total": m.entries_total}
                       for m in mismatches]})


async def audit_chains(ctx: Context) -> StepResult:
    problems: list[ChainProblem] = []
    checked = 0
    for checkpoint in await ctx.storage.chain_checkpoints():
        found, count = await _audit_chain(ctx, checkpoint)
        checked += count
        if found is not None:
            log.error("store %s: batch chain %s at batch %d", found.store_id, found.problem, found.seq)
            problems.append(found)
    return StepResult("audit_chains", not problems, {
        "batches_checked": checked,
        "problems": [{"store_id": p.store_id, "seq": p.seq, "problem": p.problem} for p in problems]})


async def _audit_chain(ctx: Context, checkpoint: ChainCheckpoint) -> tuple[ChainProblem | None, int]:
    """Check one store's chain from its checkpoint; move the checkpoint past what was sound."""
    storage, store_id = ctx.storage, checkpoint.store_id
    seq, prev = (0, GENESIS_HASH) if ctx.full_audit else (checkpoint.checked_seq, checkpoint.checked_hash)
    start, count, problem = seq, 0, None
    while problem is None:
        page = await storage.chain_page(store_id, seq, CHAIN_PAGE)
        for batch_seq, stored_hash, body in page:
            problem = _check(store_id, seq, prev, batch_seq, stored_hash, body)
            if problem is not None:
                break
            seq, prev = batch_seq, stored_hash
            count += 1
        if len(page) < CHAIN_PAGE:
            break
    if problem is None and seq <= checkpoint.last_seq and (seq, prev) != (checkpoint.last_seq, checkpoint.last_hash):
        # The store's applied head names a batch the chain does not reach, or another hash.
        problem = ChainProblem(store_id, checkpoint.last_seq, "head_mismatch")
    if seq > start:  # what was read up to here is sound, whatever follows
        await storage.save_chain_checkpoint(store_id, seq, prev, ctx.now)
    return problem, count


def _check(
    store_id: str, seq: int, prev: bytes, batch_seq: int, stored_hash: bytes, body: bytes
) -> ChainProblem | None:
    """The problem with batch ``batch_seq`` coming after batch ``seq`` of hash ``prev``, if any."""
    if batch_seq != seq + 1:
        return ChainProblem(store_id, seq + 1, "gap")
    redacted = redacted_prev_hash(body)
    if redacted is not None:
        # An erasure scrubbed this body (protocol.privacy): its bytes no longer hash to the
        # stored hash, which the next batch's link still checks; its own link is checked here.
        return None if redacted == prev else ChainProblem(store_id, batch_seq, "chain_broken")
    if body_hash(body) != stored_hash:
        return ChainProblem(store_id, batch_seq, "hash_mismatch")
    try:
        prev_hash = decode_batch(body).prev_hash
    except ProtocolError:
        return ChainProblem(store_id, batch_seq, "undecodable")
    if prev_hash != prev:
        return ChainProblem(store_id, batch_seq, "chain_broken")
    return None


async def liability_snapshot(ctx: Context) -> StepResult:
    day = utc_day(ctx.now)
    rows = await ctx.storage.take_liability_snapshot(day, ctx.now)
    brands = [{"brand_id": r.brand_id, "points": r.points, "value": r.value} for r in rows if r.store_id is None]
    return StepResult("liability_snapshot", True, {"day": day, "brands": brands, "stores": len(rows) - len(brands)})


async def silent_stores(ctx: Context) -> StepResult:
    limit_ms = int(ctx.silent_hours * 3_600_000)
    silent = []
    for store in await ctx.storage.list_store_sync():
        since = store.silent_since()
        if ctx.now - since > limit_ms:
            hours = (ctx.now - since) / 3_600_000
            log.warning("store %s (%s) not heard from in %.1f hours", store.store_id, store.brand_id, hours)
            silent.append({"store_id": store.store_id, "brand_id": store.brand_id,
                           "last_heard_at": store.last_heard_at, "hours": round(hours, 1)})
    return StepResult("silent_stores", True, {"hours": ctx.silent_hours, "silent": silent})


STEPS: tuple[tuple[str, Step], ...] = (
    ("expire_points", expire_points),
    ("merge_duplicates", merge_duplicates),
    ("audit_balances", audit_balances),
    ("audit_chains", audit_chains),
    ("liability_snapshot", liability_snapshot),
    ("silent_stores", silent_stores),
)


async def run_periodic(
    storage: Storage, now: int, *, silent_hours: float = SILENT_HOURS, full_audit: bool = False
) -> list[StepResult]:
    """Run every step once, in order; a failed step is reported and the next still runs."""
    ctx = Context(storage, now, silent_hours, full_audit)
    results = []
    for name, step in STEPS:
        try:
            results.append(await step(ctx))
        except StoreError as exc:
            log.error("periodic step %s failed: %s", name, exc)
            results.append(StepResult(name, False, {"error": str(exc)}))
    return results
