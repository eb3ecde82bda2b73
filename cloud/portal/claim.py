"""The portal's claim page: a signed-in customer claims the points of a receipt.

    GET  /portal/{brand}/claim?code=...   the QR code on a receipt leads here (the code filled in)
    POST /portal/{brand}/claim            claim it: once, within the window, by the sale's program version

Refused claims (a malformed, unknown, used or expired code) count against the
customer and the client address per hour, in the database (``portal_limits``),
so a restart keeps the limits; past them every claim is refused for the hour.
Logs name the customer id and the sale's store, never the code.
"""

from __future__ import annotations

import logging

from aiohttp import web

from protocol import LocalProtocolError
from protocol.claims import code_hash

from ..api import STORAGE
from ..claims_store import ClaimRefused
from ..otp import LIMIT_WINDOW_MS
from . import pages
from .pages import esc
from .visit import Visit, portal_handler, read_form, session_of

log = logging.getLogger(__name__)

#: Refused claims per customer, and per client address, in an hour.
FAILURES_PER_CUSTOMER = 10
FAILURES_PER_ADDRESS = 30


def _page(visit: Visit, code: str, *, error: str | None = None, claimed: str | None = None) -> str:
    parts = []
    if error:
        parts.append(f'<p class="error" id="error" role="alert">{esc(error)}</p>')
    if claimed:
        parts.append(f'<p class="notice" id="claimed">{esc(claimed)}</p>')
    parts.append(
        '<section id="claim"><h2>Claim the points of a purchase</h2>'
        f'<form method="post" action="{esc(pages.action(visit.brand_id, "claim"))}">'
        f'<input type="hidden" name="csrf" value="{esc(visit.csrf)}">'
        '<label for="code">The code on your receipt</label>'
        f'<input type="text" id="code" name="code" maxlength="64" autocomplete="off" required value="{esc(code)}">'
        '<button type="submit">Claim my points</button></form>'
        f'<p><a id="account" href="{esc(pages.action(visit.brand_id, "account"))}">My points</a></p></section>'
    )
    return pages.layout("Claim your points", visit.brand_name, "".join(parts))


@portal_handler
async def claim_page(visit: Visit) -> web.Response:
    code = visit.request.query.get("code", "")[:64]
    if await session_of(visit) is None:
        return visit.message(200, "Sign in to claim your points",
                             "Sign in (or join) first, then scan the code on your receipt again.")
    return visit.page(_page(visit, code))


@portal_handler
async def claim(visit: Visit) -> web.Response:
    form = await read_form(visit)
    session = await session_of(visit)
    if session is None:
        return visit.redirect(pages.action(visit.brand_id))
    code = form.get("code", "")[:64]
    storage = visit.request.app[STORAGE]
    window = visit.now - visit.now % LIMIT_WINDOW_MS
    keys = ("claim:customer:" + session.customer_id, "claim:address:" + visit.config.keys.address_hash(visit.client))
    async with storage.portal_tx() as tx:
        if (await tx.count(keys[0], window, 0) >= FAILURES_PER_CUSTOMER
                or await tx.count(keys[1], window, 0) >= FAILURES_PER_ADDRESS):
            return visit.page(_page(visit, code, error="Too many codes were refused. Try again in an hour."), 429)
    try:
        result = await storage.claim_sale(visit.brand_id, code_hash(code), session.customer_id, visit.now)
    except (LocalProtocolError, ClaimRefused) as exc:
        refused = exc if isinstance(exc, ClaimRefused) else ClaimRefused(
            "That is not a receipt code: it has 16 letters and digits.", code="invalid_code", status=400)
        async with storage.portal_tx() as tx:
            for key in keys:
                await tx.count(key, window, 1)
        log.info("portal claim refused for customer %s: %s", session.customer_id, refused.code)
        return visit.page(_page(visit, code, error=refused.message), refused.status)
    log.info("portal claim for customer %s: a sale of store %s, %d points", session.customer_id, result.store_id,
             result.points)
    done = f"You earned {result.points} points. Your balance is {result.balance} points."
    return visit.page(_page(visit, "", claimed=done))


def add_claim_routes(app: web.Application) -> None:
    app.router.add_get("/portal/{brand}/claim", claim_page)
    app.router.add_post("/portal/{brand}/claim", claim)
