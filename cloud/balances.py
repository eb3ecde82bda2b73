"""Balance changes the cloud makes by itself: an operator's adjustment, and expiry.

Written once against ``sql.Session``, each inside a write transaction the
caller opens. They take their locks in the batch path's order (customers
sorted by id, then the brand's change counter), so they wait for batches and
batches wait for them, but nothing deadlocks; each change bumps the
customer's version from the counter, so it goes down to every edge with the
next pull, and writes its ledger entry, so audits still add up.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from protocol import uuid7
from protocol.expiry import ExpiryMode, ExpiryPolicy, Lot, expire, lots_from_entries, upcoming

from .errors import NotFound, Refused
from .model import CLOUD_ORIGIN, CUSTOMER_COLUMNS, AdjustmentRecord, CustomerState, customer_from_row
from .sql import Session

#: What counts as activity for the ``inactivity`` expiry mode.
ACTIVITY_KINDS = frozenset({"earn", "redeem", "signup_bonus"})

Entry = tuple[str, int, int]  # (kind, points, at), in the order they were written


@dataclass(frozen=True, slots=True)
class LotView:
    """A customer's remaining lots and last activity, from their ledger entries."""

    lots: tuple[Lot, ...]
    last_activity_at: int

    @classmethod
    def of(cls, entries: Sequence[Entry]) -> LotView:
        lots = lots_from_entries((at, points) for _, points, at in entries)
        active = [at for kind, _, at in entries if kind in ACTIVITY_KINDS]
        last = max(active, default=max((at for _, _, at in entries), default=0))
        return cls(lots, last)

    def due(self, policy: ExpiryPolicy, now: int) -> int:
        """Points whose expiry has passed at ``now``."""
        gone, _ = expire(self.lots, policy, self.last_activity_at, now)
        return gone

    def upcoming(self, policy: ExpiryPolicy) -> tuple[tuple[int, int], ...]:
        return upcoming(self.lots, policy, self.last_activity_at)


async def entries_of(q: Session, customer_ids: Sequence[str]) -> dict[str, list[Entry]]:
    """Every ledger entry of these customers, in the order they were written."""
    if not customer_ids:
        return {}
    rows = await q.fetch(
        "SELECT customer_id, kind, points, at FROM ledger_entries"
        f" WHERE {q.dialect.any_of('customer_id', 1)} ORDER BY customer_id, id",
        q.dialect.strings(customer_ids),
    )
    out: dict[str, list[Entry]] = {}
    for customer_id, kind, points, at in rows:
        out.setdefault(customer_id, []).append((kind, points, at))
    return out


async def expiring_of(q: Session, customer_ids: Sequence[str], policy: ExpiryPolicy) -> dict[str, tuple[
    tuple[int, int], ...
]]:
    """Each customer's upcoming expiries under ``policy`` (none without one)."""
    if policy.mode is ExpiryMode.NONE:
        return {}
    return {cid: LotView.of(entries).upcoming(policy) for cid, entries in (await entries_of(q, customer_ids)).items()}


async def lock_customers(q: Session, customer_ids: Iterable[str]) -> dict[str, CustomerState]:
    """The customers' rows, locked in customer_id order (the batch path's order)."""
    ids = sorted(set(customer_ids))
    rows = await q.fetch(
        f"SELECT {CUSTOMER_COLUMNS} FROM customers WHERE {q.dialect.any_of('customer_id', 1)}"
        f" ORDER BY customer_id{q.dialect.for_update}",
        q.dialect.strings(ids),
    )
    return {r[0]: customer_from_row(r) for r in rows}


async def take_versions(q: Session, brand_id: str, count: int) -> int:
    """Reserve ``count`` change versions of the brand (locks its counter); the first one is returned."""
    rows = await q.fetch(
        "UPDATE brand_counters SET value = value + $1 WHERE brand_id = $2 RETURNING value", count, brand_id
    )
    last: int = rows[0][0]
    return last - count + 1


async def _move(q: Session, customer: CustomerState, points: int, kind: str, version: int, now: int) -> str:
    """Change a locked customer's balance with its ledger entry; the entry's op id."""
    op_id = uuid7(now)
    await q.fetch(
        "UPDATE customers SET balance = balance + $1, version = $2, updated_at = $3 WHERE customer_id = $4",
        points, version, now, customer.customer_id,
    )
    await q.fetch(
        "INSERT INTO ledger_entries (customer_id, op_id, store_id, sale_id, kind, points, at)"
        " VALUES ($1, $2, $3, NULL, $4, $5, $6)",
        customer.customer_id, op_id, CLOUD_ORIGIN, kind, points, now,
    )
    return op_id


async def _survivor(q: Session, customer_id: str) -> str:
    """The live profile behind ``customer_id``: itself, or the one it was merged into."""
    rows = await q.fetch("SELECT merged_into FROM customers WHERE customer_id = $1", customer_id)
    return str(rows[0][0]) if rows and rows[0][0] is not None else customer_id


async def adjust(
    q: Session, brand_id: str, customer_id: str, points: int, reason: str, actor: str, operator_id: str | None,
    now: int,
) -> AdjustmentRecord:
    """An operator's adjustment; a debit above the balance is refused, as at the edge. A merged
    profile's id adjusts its survivor (cloud/merges.py): a tombstone's balance stays 0."""
    customer = None
    for _ in range(3):  # a merge committed between the look and the locks: look again
        target = await _survivor(q, customer_id)
        locked = await lock_customers(q, {customer_id, target})  # both, in the batch path's order
        if await _survivor(q, customer_id) == target:
            customer_id, customer = target, locked.get(target)
            break
    if customer is None or customer.brand_id != brand_id:
        raise NotFound(f"no customer {customer_id!r} in brand {brand_id!r}", field="customer_id")
    if points < 0 and -points > customer.balance:
        raise Refused(
            f"not enough points: the balance is {customer.balance}, the adjustment takes {-points}",
            field="points", code="insufficient_balance",
        )
    version = await take_versions(q, brand_id, 1)
    op_id = await _move(q, customer, points, "adjust", version, now)
    record = AdjustmentRecord(op_id, brand_id, customer_id, points, reason, actor, operator_id,
                              customer.balance + points, version, now)
    await q.fetch(
        "INSERT INTO adjustments (op_id, brand_id, customer_id, points, reason, actor, operator_id, balance_after,"
        " version, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        record.op_id, record.brand_id, record.customer_id, record.points, record.reason, record.actor,
        record.operator_id, record.balance_after, record.version, record.at,
    )
    return record


async def expire_customers(
    q: Session, brand_id: str, customer_ids: Sequence[str], policy: ExpiryPolicy, now: int
) -> tuple[int, int]:
    """Expire what is due for these customers: (customers changed, points expired).

    Recomputed from the ledger under the customers' locks, so a second run,
    or a run after an interrupted one, finds only what is still due.
    """
    customers = await lock_customers(q, customer_ids)
    entries = await entries_of(q, sorted(customers))
    due = {cid: LotView.of(entries.get(cid, [])).due(policy, now) for cid in customers}
    # Never below zero: a balance the lots do not cover (a negative history) keeps what it has.
    due = {cid: min(points, customers[cid].balance) for cid, points in due.items() if points > 0}
    due = {cid: points for cid, points in due.items() if points > 0}
    if not due:
        return 0, 0
    first = await take_versions(q, brand_id, len(due))
    for offset, cid in enumerate(sorted(due)):
        await _move(q, customers[cid], -due[cid], "expire", first + offset, now)
    return len(due), sum(due.values())


async def bump_brand(q: Session, brand_id: str) -> int:
    """A new version for every customer of the brand (their expiring lists
    changed with the program); the number of customers."""
    ids = [r[0] for r in await q.fetch(
        f"SELECT customer_id FROM customers WHERE brand_id = $1 ORDER BY customer_id{q.dialect.for_update}",
        brand_id,
    )]
    if not ids:
        return 0
    first = await take_versions(q, brand_id, len(ids))
    await q.fetch(
        "UPDATE customers SET version = v.n FROM (SELECT customer_id,"
        " $2 - 1 + row_number() OVER (ORDER BY customer_id) AS n FROM customers WHERE brand_id = $1) AS v"
        " WHERE customers.customer_id = v.customer_id",
        brand_id, first,
    )
    return len(ids)

