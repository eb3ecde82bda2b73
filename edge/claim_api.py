"""Terminal routes for card-linked profiles and retroactive claims.

    POST /v1/earns (a whole sale, no customer_id)  the linked card's profile earns, or
                                                    the sale is recorded unclaimed with a claim code
    POST /v1/claims {code, customer_id}            a cashier claims a receipt for a customer
    GET  /v1/customers?card_token=...              (api.find_customers) the profile a card is linked to
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from protocol import Claim, Earn, LocalProtocolError, Program, UnclaimedSale, uuid7
from protocol.claim_ops import NO_CUSTOMER
from protocol.claims import claim_url, code_hash, expires_at, new_code, payment_token
from protocol.earning import Customer as RulesCustomer
from protocol.earning import compute_earn
from protocol.rules import earning_rules
from protocol.sale import Sale

from . import claim_writes, sale_writes
from .api_support import live_customer_id, write
from .appkeys import CONFIG, STORE
from .inputs import check_fields, get_str
from .writes import Action


def earn_without_profile(request: web.Request, program: Program, sale: Sale, terminal_id: str, now: int) -> Action:
    """A whole-sale earn with no customer_id: the profile the sale's card is linked
    to earns; with no linked card the sale is recorded unclaimed, with a claim code."""
    store = request.app[STORE]
    token = payment_token(sale)
    who = None if token is None else store.read(lambda c: claim_writes.linked_customer(c, token))
    rules = earning_rules(program)
    if who is not None:
        rating = store.rating(who)
        op = Earn(op_id=uuid7(now), at=now, terminal_id=terminal_id, customer_id=who, sale_id=sale.sale_id,
                  amount=sale.total, points=compute_earn(sale, rules, rating, now).total,
                  program_version=program.version, sale=sale)
        return sale_writes.earn(op, rating, {"resolved_by": "card"})
    code = new_code()
    unclaimed = UnclaimedSale(
        op_id=uuid7(now), at=now, terminal_id=terminal_id, customer_id=NO_CUSTOMER, sale_id=sale.sale_id,
        amount=sale.total, program_version=program.version, sale=sale, claim_hash=code_hash(code),
        expires_at=expires_at(now, program.options),
    )
    answer: dict[str, Any] = {
        "op_id": unclaimed.op_id,
        "sale_id": sale.sale_id,
        "customer_id": None,
        "amount": sale.total,
        # What a claim earns a customer in no group; the claim computes it for the claimer.
        "points": compute_earn(sale, rules, RulesCustomer(), now).total,
        "program_version": program.version,
        "claim": {
            "code": code,
            "qr": claim_url(request.app[CONFIG].cloud_url, program.brand_id, code),
            "expires_at": unclaimed.expires_at,
        },
    }
    return claim_writes.record_unclaimed(unclaimed, answer)


async def claim(request: web.Request) -> web.Response:
    """A cashier claims a receipt's points for a customer, with the code printed on it."""

    def build(body: dict[str, Any], terminal_id: str, now: int) -> Action:
        check_fields(body, {"code", "customer_id"})
        raw = get_str(body, "code", 64)
        who = live_customer_id(request, body.get("customer_id"))  # a merged id claims for its survivor
        try:
            hashed: str | None = code_hash(str(raw))
        except LocalProtocolError:
            hashed = None  # counted as a refused attempt, like a well-formed wrong code

        def make(sale_id: str, points: int, version: int) -> Claim:
            return Claim(op_id=uuid7(now), at=now, terminal_id=terminal_id, customer_id=who, sale_id=sale_id,
                         points=points, program_version=version)

        return claim_writes.claim(hashed, who, terminal_id, now, make)

    return await write(request, build)
