"""Duplicate profiles: one card code or phone given to two new profiles.

Each edge refuses a duplicate code or phone among the profiles it knows, but
two stores offline (or a card assigned at one store to a profile while
another store gave that card to someone new) can still make two profiles of
the brand hold one card code or phone. The cloud resolves it by one rule:

- the **survivor** is the older profile (``created_at``, then ``customer_id``);
- the duplicate's remaining points move to the survivor as ledger entries of
  their own, one pair per lot (``merge_out`` on the duplicate, ``merge_in`` on
  the survivor, both dated when the lot was earned, so expiry dates and
  per-period reports are unchanged); both histories stay where they were;
- the survivor takes the card code, phone or email it lacks; the duplicate
  keeps as a **tombstone** (balance 0, ``merged_into`` = survivor) only the
  identifiers that differ from the survivor's, so a second card still finds
  the customer through it;
- both get new versions (the tombstone first), so the next pull of every
  edge of the brand carries the merge; an op addressed to a merged id later
  lands on the survivor (``LedgerState.merged``), and the edge maps the id;
- every merge is a ``merges`` row (``loyalty-cloud merges BRAND``).

A merge runs in one transaction that locks the customers in customer_id
order, then the brand's counter: the batch path's order, so merges and
reconcilers wait for each other and never deadlock. It re-checks the
collision under the locks, so a second run (or one racing another) merges
nothing twice. The periodic job runs ``merge_duplicates`` over every brand;
the worker runs it after a batch that set a card code or phone, so edges
learn of a merge with their next pull.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from protocol import uuid7

from . import balances
from .model import CLOUD_ORIGIN, CUSTOMER_COLUMNS, CustomerState, customer_from_row
from .sql import Session

log = logging.getLogger(__name__)

#: What makes two profiles one customer, in the order collisions are looked for.
REASONS = ("card_code", "phone")
#: Identifiers a survivor takes from its duplicate when it has none.
IDENTIFIERS = ("phone", "email", "card_code")
MERGE_COLUMNS = (
    "merge_id, brand_id, survivor_id, duplicate_id, reason, survivor_balance_before, duplicate_balance_before,"
    " at, actor"
)
_LIVE = "COALESCE(merged_into, customer_id)"


@dataclass(frozen=True, slots=True)
class MergeRecord:
    """One merge, as audited: who survived, who was folded in, why, and the balances before."""

    merge_id: str
    brand_id: str
    survivor_id: str
    duplicate_id: str
    reason: str  # card_code or phone
    survivor_balance_before: int
    duplicate_balance_before: int
    at: int
    actor: str  # "periodic", or the batch whose profiles collided ("batch STORE/SEQ")


@dataclass(frozen=True, slots=True)
class Collision:
    brand_id: str
    reason: str
    value: str


async def load_customers(q: Session, customer_ids: Iterable[str]) -> tuple[dict[str, CustomerState], dict[str, str]]:
    """The batch path's customers with the survivors of any merged ones, locked (PostgreSQL) in
    customer_id order by one statement, and the tombstone -> survivor map."""
    ids = q.dialect.any_of("customer_id", 1)
    survivors = f"SELECT merged_into FROM customers WHERE {ids} AND merged_into IS NOT NULL"
    # One list of keys, not an OR: PostgreSQL would scan the whole table for the OR.
    keys = (f"customer_id IN (SELECT value FROM json_each($1) UNION {survivors})" if q.dialect.sqlite
            else f"customer_id = ANY($1::text[] || ARRAY({survivors}))")
    rows = await q.fetch(
        f"SELECT {CUSTOMER_COLUMNS}, merged_into FROM customers WHERE {keys}"
        f" ORDER BY customer_id{q.dialect.for_update}",
        q.dialect.strings(sorted(set(customer_ids))),
    )
    merged = {r[0]: r[14] for r in rows if r[14] is not None}
    missing = sorted(set(merged.values()) - {r[0] for r in rows})
    if missing:  # merged after the statement took its snapshot, before it locked (rare): lock those too
        rows += await q.fetch(
            f"SELECT {CUSTOMER_COLUMNS}, merged_into FROM customers WHERE {ids}"
            f" ORDER BY customer_id{q.dialect.for_update}",
            q.dialect.strings(missing),
        )
    return {r[0]: customer_from_row(r) for r in rows}, merged


async def find_collisions(q: Session, brand_id: str | None = None,
                          customer_ids: Sequence[str] | None = None) -> list[Collision]:
    """Card codes and phones that two live profiles of a brand hold (through themselves or their
    tombstones): every brand's (or one brand's), or only those ``customer_ids`` hold. One statement."""
    if customer_ids is not None:
        return await _collisions_of(q, customer_ids)
    parts, args = [], []
    if brand_id is not None:
        args.append(brand_id)
    for reason in REASONS:
        where = f"{reason} IS NOT NULL" + (" AND brand_id = $1" if brand_id is not None else "")
        parts.append(f"SELECT brand_id, '{reason}' AS reason, {reason} AS value FROM customers WHERE {where}"
                     f" GROUP BY brand_id, {reason} HAVING COUNT(DISTINCT {_LIVE}) > 1")
    rows = await q.fetch(" UNION ALL ".join(parts) + " ORDER BY 1, 2, 3", *args)
    return [Collision(r[0], r[1], r[2]) for r in rows]


async def _collisions_of(q: Session, customer_ids: Sequence[str]) -> list[Collision]:
    """The batch path's check: an index probe per customer and identifier (no scan, no grouping)."""
    parts = [
        f"SELECT c.brand_id, '{reason}', c.{reason} FROM customers c WHERE {q.dialect.any_of('c.customer_id', 1)}"
        f" AND c.{reason} IS NOT NULL AND EXISTS (SELECT 1 FROM customers o WHERE o.brand_id = c.brand_id"
        f" AND o.{reason} = c.{reason} AND COALESCE(o.merged_into, o.customer_id)"
        f" <> COALESCE(c.merged_into, c.customer_id))"
        for reason in REASONS
    ]
    rows = await q.fetch(" UNION ALL ".join(parts), q.dialect.strings(sorted(set(customer_ids))))
    return sorted({Collision(r[0], r[1], r[2]) for r in rows}, key=lambda c: (c.brand_id, c.reason, c.value))


async def holders(q: Session, collision: Collision) -> list[tuple[int, str]]:
    """The live profiles that hold a collision's value, oldest first: (created_at, customer_id)."""
    rows = await q.fetch(
        f"SELECT created_at, customer_id FROM customers WHERE customer_id IN (SELECT {_LIVE} FROM customers"
        f" WHERE brand_id = $1 AND {collision.reason} = $2) AND merged_into IS NULL",
        collision.brand_id, collision.value,
    )
    return sorted((int(r[0]), str(r[1])) for r in rows)  # in Python: byte order, whatever the collation


async def merge_pair(q: Session, collision: Collision, survivor_id: str, duplicate_id: str, actor: str,
                     now: int) -> MergeRecord | None:
    """Fold ``duplicate_id`` into ``survivor_id`` in ``q``'s transaction; None if, under the locks,
    they no longer collide (merged already, by another run or another path)."""
    pointing = [r[0] for r in await q.fetch("SELECT customer_id FROM customers WHERE merged_into = $1",
                                            duplicate_id)]
    locked = await balances.lock_customers(q, [survivor_id, duplicate_id, *pointing])
    survivor, duplicate = locked.get(survivor_id), locked.get(duplicate_id)
    if survivor is None or duplicate is None or not await _still_collide(q, collision, survivor_id, duplicate_id):
        return None
    if (duplicate.created_at, duplicate_id) < (survivor.created_at, survivor_id):
        raise ValueError("the survivor must be the older profile")  # callers pick it; a bug otherwise
    entries = (await balances.entries_of(q, [duplicate_id])).get(duplicate_id, [])
    moves = [(lot.earned_at, lot.points) for lot in balances.LotView.of(entries).lots]
    rest = duplicate.balance - sum(points for _, points in moves)
    if rest:  # a balance the lots do not make up (below zero): moved as it stands
        moves.append((now, rest))
    first = await balances.take_versions(q, collision.brand_id, 2)
    merge_id = uuid7(now)
    if moves:
        await q.many(
            "INSERT INTO ledger_entries (customer_id, op_id, store_id, sale_id, kind, points, at)"
            " VALUES ($1, $2, $3, NULL, $4, $5, $6)",
            [row for at, points in moves for row in (
                (duplicate_id, merge_id, CLOUD_ORIGIN, "merge_out", -points, at),
                (survivor_id, merge_id, CLOUD_ORIGIN, "merge_in", points, at),
            )],
        )
    kept, taken = _identifiers(survivor, duplicate)
    await q.fetch(
        "UPDATE customers SET balance = 0, version = $1, updated_at = $2, merged_into = $3, phone = $4,"
        " email = $5, card_code = $6 WHERE customer_id = $7",
        first, now, survivor_id, kept["phone"], kept["email"], kept["card_code"], duplicate_id,
    )
    await q.fetch(
        "UPDATE customers SET balance = balance + $1, version = $2, updated_at = $3, phone = $4, email = $5,"
        " card_code = $6 WHERE customer_id = $7",
        duplicate.balance, first + 1, now, taken["phone"], taken["email"], taken["card_code"], survivor_id,
    )
    # A card linked to the duplicate follows the person, unless the survivor has a card of its
    # own (a profile holds one card); the survivor's new version carries it down to the edges.
    await q.fetch(
        "UPDATE card_links SET customer_id = $1 WHERE customer_id = $2"
        " AND NOT EXISTS (SELECT 1 FROM card_links WHERE customer_id = $1)", survivor_id, duplicate_id)
    await q.fetch("DELETE FROM card_links WHERE customer_id = $1", duplicate_id)
    await q.fetch("DELETE FROM card_streaks WHERE customer_id = $1", duplicate_id)
    # Tombstones of the duplicate now name the survivor: every merged id resolves in one step.
    await q.fetch("UPDATE customers SET merged_into = $1 WHERE merged_into = $2", survivor_id, duplicate_id)
    record = MergeRecord(merge_id, collision.brand_id, survivor_id, duplicate_id, collision.reason,
                         survivor.balance, duplicate.balance, now, actor)
    await q.fetch(f"INSERT INTO merges ({MERGE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                  *record_row(record))
    return record


def record_row(record: MergeRecord) -> tuple[object, ...]:
    return (record.merge_id, record.brand_id, record.survivor_id, record.duplicate_id, record.reason,
            record.survivor_balance_before, record.duplicate_balance_before, record.at, record.actor)


async def _still_collide(q: Session, collision: Collision, survivor_id: str, duplicate_id: str) -> bool:
    """Both still live, and both still hold the value (themselves or through a tombstone)."""
    live = await q.fetch(
        "SELECT COUNT(*) FROM customers WHERE customer_id IN ($1, $2) AND merged_into IS NULL",
        survivor_id, duplicate_id,
    )
    holding = await q.fetch(
        f"SELECT COUNT(DISTINCT {_LIVE}) FROM customers WHERE brand_id = $1 AND {collision.reason} = $2"
        f" AND {_LIVE} IN ($3, $4)",
        collision.brand_id, collision.value, survivor_id, duplicate_id,
    )
    return int(live[0][0]) == 2 and int(holding[0][0]) == 2


def _identifiers(survivor: CustomerState, duplicate: CustomerState) -> tuple[dict[str, str | None],
                                                                             dict[str, str | None]]:
    """(what the tombstone keeps, what the survivor holds after the merge) of phone, email, card code:
    the survivor takes what it lacks; the tombstone keeps only what differs from the survivor's."""
    kept: dict[str, str | None] = {}
    taken: dict[str, str | None] = {}
    for field in IDENTIFIERS:
        mine, theirs = getattr(survivor, field), getattr(duplicate, field)
        taken[field] = theirs if mine is None else mine
        kept[field] = None if theirs is None or taken[field] == theirs else theirs
    return kept, taken


@dataclass(frozen=True, slots=True)
class MergeSummary:
    """What one ``merge_duplicates`` run did."""

    collisions: int
    merged: int
    merges: tuple[MergeRecord, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {"collisions": self.collisions, "merged": self.merged,
                "merges": [{"merge_id": m.merge_id, "brand_id": m.brand_id, "survivor_id": m.survivor_id,
                            "duplicate_id": m.duplicate_id, "reason": m.reason} for m in self.merges]}


class MergeLedger:
    """The ``Storage`` methods of duplicate merges (``ledger.SqlLedger`` includes them)."""

    def _read(self) -> AbstractAsyncContextManager[Session]:
        raise NotImplementedError

    def _write(self) -> AbstractAsyncContextManager[Session]:
        raise NotImplementedError

    async def merge_duplicates(self, now: int, *, brand_id: str | None = None,
                               customer_ids: Sequence[str] | None = None, actor: str = "periodic") -> MergeSummary:
        """Merge every duplicate profile (of one brand, or only the collisions ``customer_ids`` are
        part of) into the older one; one transaction per merge. Idempotent: what was merged no
        longer collides, so a second run, or one after an interrupted run, merges only what is left."""
        async with self._read() as q:
            collisions = await find_collisions(q, brand_id, customer_ids)
        done: list[MergeRecord] = []
        for collision in collisions:
            async with self._read() as q:
                live = await holders(q, collision)
            for _, duplicate_id in live[1:]:
                async with self._write() as q:
                    record = await merge_pair(q, collision, live[0][1], duplicate_id, actor, now)
                if record is not None:
                    log.info("merged customer %s into %s (same %s) for brand %s", record.duplicate_id,
                             record.survivor_id, record.reason, record.brand_id)
                    done.append(record)
        return MergeSummary(len(collisions), len(done), tuple(done))

    async def list_merges(self, brand_id: str) -> list[MergeRecord]:
        async with self._read() as q:
            rows = await q.fetch(f"SELECT {MERGE_COLUMNS} FROM merges WHERE brand_id = $1 ORDER BY at, merge_id",
                                 brand_id)
        return [MergeRecord(*r) for r in rows]
