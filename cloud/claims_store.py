"""SQL for unclaimed sales, claims and card links, written once against ``sql.Session``.

The batch path (``load_claims``, ``save_claims``) runs inside a batch's
transaction, after its customers are locked: a claimable sale's row is locked
next (PostgreSQL), then the brand's counter, the batch path's order. The
portal's claim (``portal_claim``) locks the customer, then the sale's row,
then the counter: the same order, so a portal claim and a batch claiming the
same sale wait for each other, and the second one finds it claimed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from protocol import uuid7
from protocol.claims import sale_of
from protocol.earning import Customer as RulesCustomer
from protocol.earning import compute_earn
from protocol.refunds import EarnBasis
from protocol.rules import earning_rules

from .balances import lock_customers, take_versions
from .claims_model import CLAIMABLE_COLUMNS, PORTAL_ORIGIN, ClaimableSale, ClaimRows, ClaimState, PortalClaim
from .engagement_store import insert_messages
from .errors import Refused
from .messages import earned_messages
from .model import program_from_row
from .sql import Session, one

_MARKS = ", ".join(f"${i}" for i in range(1, 16))


class ClaimRefused(Refused):
    """A claim the rules refuse: unknown, used or expired code (``status`` for the page)."""

    def __init__(self, message: str, *, code: str, status: int) -> None:
        super().__init__(message, field="code", code=code)
        self.status = status


async def load_claims(q: Session, store_id: str, customer_ids: Sequence[str], sale_ids: Sequence[str]) -> ClaimState:
    rows = await q.fetch(
        f"SELECT {CLAIMABLE_COLUMNS} FROM claimable_sales WHERE store_id = $1 AND {q.dialect.any_of('sale_id', 2)}"
        f" ORDER BY sale_id{q.dialect.for_update}",
        store_id, q.dialect.strings(sorted(set(sale_ids))),
    )
    streaks = await q.fetch(
        f"SELECT customer_id, last_token FROM card_streaks WHERE {q.dialect.any_of('customer_id', 1)}",
        q.dialect.strings(sorted(set(customer_ids))),
    )
    return ClaimState({r[3]: ClaimableSale.of_row(r) for r in rows}, {r[0]: r[1] for r in streaks})


async def save_claims(q: Session, brand_id: str, rows: ClaimRows) -> None:
    if not (rows.claimables or rows.streaks or rows.links):
        return
    await q.many(
        f"INSERT INTO claimable_sales ({CLAIMABLE_COLUMNS}) VALUES ({_MARKS}) ON CONFLICT (code_hash) DO UPDATE SET"
        " customer_id = excluded.customer_id, claim_op_id = excluded.claim_op_id, claimed_at = excluded.claimed_at,"
        " claimed_via = excluded.claimed_via, points = excluded.points",
        [(c.code_hash, c.brand_id, c.store_id, c.sale_id, c.op_id, c.amount, c.program_version, c.sale, c.at,
          c.expires_at, c.customer_id, c.claim_op_id, c.claimed_at, c.claimed_via, c.points) for c in rows.claimables],
    )
    await q.many(
        "INSERT INTO card_streaks (customer_id, last_token) VALUES ($1, $2)"
        " ON CONFLICT (customer_id) DO UPDATE SET last_token = excluded.last_token",
        list(rows.streaks),
    )
    for token, customer_id, at in rows.links:  # in order: the newest link of a token or a profile wins
        await q.fetch("DELETE FROM card_links WHERE (brand_id = $1 AND token = $2) OR customer_id = $3",
                      brand_id, token, customer_id)
        await q.fetch("INSERT INTO card_links (brand_id, token, customer_id, linked_at) VALUES ($1, $2, $3, $4)",
                      brand_id, token, customer_id, at)


async def card_tokens(q: Session, customer_ids: Sequence[str]) -> dict[str, str]:
    """The card token linked to each of these customers that has one."""
    if not customer_ids:
        return {}
    rows = await q.fetch(f"SELECT customer_id, token FROM card_links WHERE {q.dialect.any_of('customer_id', 1)}",
                         q.dialect.strings(list(customer_ids)))
    return {r[0]: r[1] for r in rows}


async def portal_claim(q: Session, brand_id: str, code_hash: str, customer_id: str, now: int) -> PortalClaim:
    """Claim the sale with this code for a signed-in customer, once; ClaimRefused otherwise."""
    select = f"SELECT {CLAIMABLE_COLUMNS} FROM claimable_sales WHERE code_hash = $1"
    found = one(await q.fetch(select, code_hash))
    if found is None or found[1] != brand_id:
        raise ClaimRefused("No purchase has this code. Check the code on your receipt.", code="unknown_code",
                           status=404)
    customer = (await lock_customers(q, [customer_id])).get(customer_id)
    if customer is None or customer.brand_id != brand_id:
        raise ClaimRefused("Your account was not found.", code="unknown_customer", status=404)
    locked = one(await q.fetch(select + q.dialect.for_update, code_hash))
    assert locked is not None  # rows are never deleted
    sale_row = ClaimableSale.of_row(locked)
    if sale_row.customer_id is not None:
        raise ClaimRefused("The points of this purchase were already claimed.", code="already_claimed", status=409)
    if now > sale_row.expires_at:
        raise ClaimRefused("This code has expired.", code="claim_expired", status=410)
    program = program_from_row(one(await q.fetch(
        "SELECT brand_id, version, name, points_per_unit, unit_amount, settings FROM programs"
        " WHERE brand_id = $1 AND version = $2", brand_id, sale_row.program_version,
    )))
    rating = RulesCustomer(tuple(json.loads(customer.groups)), customer.opted_out)
    sale = sale_of(sale_row.sale)
    points = 0 if program is None else compute_earn(sale, earning_rules(program), rating, sale_row.at).total
    op_id = uuid7(now)
    version = await take_versions(q, brand_id, 1)
    await q.fetch("UPDATE customers SET balance = balance + $1, version = $2, updated_at = $3 WHERE customer_id = $4",
                  points, version, now, customer_id)
    if points:
        await q.fetch(
            "INSERT INTO ledger_entries (customer_id, op_id, store_id, sale_id, kind, points, at)"
            " VALUES ($1, $2, $3, $4, 'earn', $5, $6)",
            customer_id, op_id, sale_row.store_id, sale_row.sale_id, points, now,
        )
    if points > 0:  # as a claim at a till would: the points-earned message, and any reward reached
        rewards = () if program is None else program.options.rewards
        await insert_messages(q, earned_messages(brand_id, customer_id, op_id, customer.balance,
                                                 customer.balance + points, now, rewards))
    basis = EarnBasis(sale, sale_row.program_version, sale_row.at, rating).to_bytes()
    await q.fetch(
        "INSERT INTO sales (store_id, sale_id, customer_id, earned, redeemed, basis) VALUES ($1, $2, $3, $4, 0, $5)"
        " ON CONFLICT (store_id, sale_id) DO NOTHING",
        sale_row.store_id, sale_row.sale_id, customer_id, points, basis,
    )
    await q.fetch(
        "UPDATE claimable_sales SET customer_id = $1, claim_op_id = $2, claimed_at = $3, claimed_via = $4,"
        " points = $5 WHERE code_hash = $6",
        customer_id, op_id, now, PORTAL_ORIGIN, points, code_hash,
    )
    return PortalClaim(sale_row.sale_id, sale_row.store_id, points, customer.balance + points)
