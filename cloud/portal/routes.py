"""The portal's routes: sign up or sign in with a code, then the account page.

    GET  /portal/{brand}            join (with a valid link token ``t``) or sign in
    POST /portal/{brand}/code       send a code to a phone or email
    POST /portal/{brand}/verify     check it; sign up or sign in; session cookie
    GET  /portal/{brand}/account    balance, expiring points, ways to earn and redeem, consents
    POST /portal/{brand}/consent    give or withdraw consent to messages on a channel
    POST /portal/{brand}/signout
    GET  /portal/{brand}/claim, POST   claim a receipt's points (``claim``)

No GET changes anything. Every POST carries a CSRF token (a keyed hash of a
random HttpOnly, SameSite=Strict cookie) and a body of at most
``MAX_FORM_BYTES``, bounded before parsing. The session cookie is a random
token the database keeps only a keyed hash of. A refused form answers the
page again with the reason and changes nothing (a wrong code counts as a
try, which is the point of counting).
"""

from __future__ import annotations

import json
import logging
import secrets

from aiohttp import web

from protocol import ProtocolError, uuid7

from ..api import STORAGE
from ..engagement_model import Channel, ConsentRecord, MessageContact, MessageKind, PortalEnrollment, PortalSession
from ..messages import idempotency_key, render
from ..otp import OtpRefused, issue_code, verify_code
from ..senders import Outgoing, SendError
from . import pages
from .claim import add_claim_routes
from .config import SENDERS
from .inputs import link_problem, parse_contact, parse_name
from .view import account_view
from .visit import (
    COOKIE_PATH,
    COOKIE_VALUE,
    SESSION_COOKIE,
    PageError,
    Visit,
    check_link,
    portal_handler,
    read_form,
    session_of,
)

log = logging.getLogger(__name__)

# ---- pages


@portal_handler
async def landing(visit: Visit) -> web.Response:
    token = visit.request.query.get("t", "")
    if not token and await session_of(visit) is not None:
        return visit.redirect(pages.action(visit.brand_id, "account"))
    signup, problem, status = None, None, 200
    if token:
        try:
            await check_link(visit, token)
            signup = pages.SignupForm(token=token)
        except ProtocolError as exc:
            problem, status = link_problem(exc), 410 if exc.code == "link_expired" else 400
    else:
        problem = "To join, open the link on your receipt or scan the QR code in store."
    html = pages.landing(visit.brand_id, visit.brand_name, visit.csrf, signup=signup, link_problem=problem)
    return visit.page(html, status)


def _carried(form: dict[str, str]) -> dict[str, str]:
    """What the code page carries on to the verify step (all checked again there)."""
    if form.get("intent") == "signup":
        return {"intent": "signup", "t": form.get("t", ""), "name": form.get("name", ""),
                "terms": form.get("terms", ""), "messages": form.get("messages", "")}
    return {"intent": "signin"}


@portal_handler
async def send_code(visit: Visit) -> web.Response:
    form = await read_form(visit)
    intent = form.get("intent")
    signup = None
    if intent == "signup":
        signup = pages.SignupForm(token=form.get("t", ""), name=form.get("name", ""),
                                  contact=form.get("contact", ""), terms=form.get("terms") == "1",
                                  messages=form.get("messages") == "1")
    elif intent != "signin":
        raise PageError(400, "Form not understood", "Send the form from the page.")

    def again(error: str, status: int = 400) -> web.Response:
        return visit.page(pages.landing(visit.brand_id, visit.brand_name, visit.csrf, signup=signup,
                                        link_problem=None, error=error,
                                        signin_contact="" if signup else form.get("contact", "")), status)

    try:
        if signup is not None:
            try:
                await check_link(visit, signup.token)
            except ProtocolError as exc:
                raise PageError(410 if exc.code == "link_expired" else 400, "Link not valid",
                                link_problem(exc)) from exc
            parse_name(signup.name)
            if not signup.terms:
                return again("Tick the box to accept the program terms.")
        contact = parse_contact(form.get("contact", ""), visit.config.default_region)
    except ValueError as exc:
        return again(str(exc))
    storage = visit.request.app[STORAGE]
    try:
        issued = await issue_code(storage, visit.config.keys, brand_id=visit.brand_id, contact=contact,
                                  client=visit.client, now=visit.now)
    except OtpRefused as exc:
        return again(exc.message, exc.status)
    text = render(MessageKind.ONE_TIME_CODE, json.dumps({"code": issued.code}),
                  MessageContact("", visit.brand_id, visit.brand_name, "", None, None, frozenset()))
    outgoing = Outgoing(f"code {issued.challenge_id[:8]}", MessageKind.ONE_TIME_CODE, contact.channel, contact.value,
                        text.subject, text.text, idempotency_key("otp:" + issued.challenge_id))
    try:
        await visit.request.app[SENDERS].for_channel(contact.channel).send(outgoing)
    except SendError as exc:
        log.warning("sign-in code %s via %s not sent: %s", issued.challenge_id[:8], contact.channel.value, exc.reason)
        return again("We could not send the code just now. Try again in a minute.", 503)
    log.info("sign-in code %s sent via %s", issued.challenge_id[:8], contact.channel.value)
    html = pages.verify(visit.brand_id, visit.brand_name, visit.csrf, challenge_id=issued.challenge_id,
                        contact=contact.value, carried=_carried(form))
    return visit.page(html)


@portal_handler
async def check_code(visit: Visit) -> web.Response:
    form = await read_form(visit)
    carried = _carried(form)
    try:
        contact = parse_contact(form.get("contact", ""), visit.config.default_region)
    except ValueError as exc:
        raise PageError(400, "Start again", str(exc)) from exc
    storage = visit.request.app[STORAGE]
    challenge_id = form.get("challenge", "")[:64]
    try:
        await verify_code(storage, visit.config.keys, brand_id=visit.brand_id, challenge_id=challenge_id,
                          contact=contact, code=form.get("code", "").strip(), client=visit.client, now=visit.now)
    except OtpRefused as exc:
        html = pages.verify(visit.brand_id, visit.brand_name, visit.csrf, challenge_id=challenge_id,
                            contact=contact.value, carried=carried, error=exc.message,
                            retry=exc.code == "wrong_code" and "last try" not in exc.message)
        return visit.page(html, exc.status)
    phone = contact.value if contact.channel is Channel.PHONE else None
    email = contact.value if contact.channel is Channel.EMAIL else None
    customer = await storage.find_customer(visit.brand_id, phone=phone, email=email)
    if customer is None and carried["intent"] == "signup":
        try:
            link = await check_link(visit, carried["t"])
            name = parse_name(carried["name"])
        except (ProtocolError, ValueError) as exc:
            raise PageError(400, "Start again", "The sign-up form changed on the way. Start again.") from exc
        if carried["terms"] != "1":
            raise PageError(400, "Start again", "The program terms must be accepted to join. Start again.")
        program = await storage.current_program(visit.brand_id)
        bonus = program.options.rules.signup_bonus if program is not None else 0
        channels = (contact.channel.value,) if carried["messages"] == "1" else ()
        enrollment = PortalEnrollment(uuid7(visit.now), visit.brand_id, link.store_id, name, phone, email,
                                      channels, visit.now)
        customer, created = await storage.enroll_customer(enrollment, bonus, uuid7(visit.now))
        log.info("portal sign-up for brand %s: customer %s %s", visit.brand_id, customer.customer_id,
                 "created" if created else "already known")
    if customer is None:
        raise PageError(404, "Not a member yet",
                        "We have no member with this phone or email. To join, open the link on your receipt.")
    token = secrets.token_urlsafe(32)
    expires = visit.now + visit.config.session_ttl_ms
    await storage.create_session(PortalSession(visit.config.keys.token_hash(token), visit.brand_id,
                                               customer.customer_id, visit.now, expires))
    response = visit.redirect(pages.action(visit.brand_id, "account"))
    visit.set_cookie(response, SESSION_COOKIE, token, visit.config.session_ttl_ms)
    return response


@portal_handler
async def account(visit: Visit) -> web.Response:
    session = await session_of(visit)
    storage = visit.request.app[STORAGE]
    customer = None if session is None else await storage.get_customer(session.customer_id)
    if customer is None:
        return visit.redirect(pages.action(visit.brand_id))
    program = await storage.current_program(visit.brand_id)
    entries = await storage.customer_entries(customer.customer_id)
    contact = (await storage.message_contacts([customer.customer_id])).get(customer.customer_id)
    view = account_view(customer, program, entries, contact.consents if contact else frozenset(), visit.now)
    notices = {"consent": "Your message settings are saved."}
    html = pages.account(visit.brand_id, visit.brand_name, visit.csrf, view,
                         notice=notices.get(visit.request.query.get("done", "")))
    return visit.page(html)


@portal_handler
async def change_consent(visit: Visit) -> web.Response:
    form = await read_form(visit)
    session = await session_of(visit)
    if session is None:
        return visit.redirect(pages.action(visit.brand_id))
    storage = visit.request.app[STORAGE]
    customer = await storage.get_customer(session.customer_id)
    channel, verb = form.get("channel"), form.get("action")
    if customer is None or channel not in {c.value for c in Channel} or verb not in {"give", "withdraw"}:
        raise PageError(400, "Not saved", "That change was not understood; nothing was changed.")
    if verb == "give" and (customer.email if channel == Channel.EMAIL.value else customer.phone) is None:
        raise PageError(400, "Not saved", "We have no address for that channel; nothing was changed.")
    await storage.record_consent(ConsentRecord(visit.brand_id, customer.customer_id, channel, verb == "give",
                                               visit.now, "portal", None, None))
    log.info("portal consent for customer %s: %s %s", customer.customer_id, channel, verb)
    return visit.redirect(pages.action(visit.brand_id, "account") + "?done=consent")


@portal_handler
async def sign_out(visit: Visit) -> web.Response:
    await read_form(visit)
    token = visit.request.cookies.get(SESSION_COOKIE, "")
    if COOKIE_VALUE.fullmatch(token):
        await visit.request.app[STORAGE].delete_session(visit.config.keys.token_hash(token))
    response = visit.redirect(pages.action(visit.brand_id))
    response.del_cookie(SESSION_COOKIE, path=COOKIE_PATH)
    return response


def add_portal_routes(app: web.Application) -> None:
    app.router.add_get("/portal/{brand}", landing)
    app.router.add_post("/portal/{brand}/code", send_code)
    app.router.add_post("/portal/{brand}/verify", check_code)
    app.router.add_get("/portal/{brand}/account", account)
    app.router.add_post("/portal/{brand}/consent", change_consent)
    app.router.add_post("/portal/{brand}/signout", sign_out)
    add_claim_routes(app)
