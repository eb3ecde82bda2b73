"""Request plumbing of the portal: the brand, the clock, the CSRF cookie, bounded forms,
links and sessions, and refusals answered as pages (never as the API's JSON)."""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl

from aiohttp import web

from protocol import ProtocolError, load_public_key
from protocol.signup_link import SignupLink, check_fresh, parse_token

from ..api import CLOCK, CLOUD_KEY, STORAGE
from ..engagement_model import PortalSession
from ..errors import StoreError
from ..store_keys_model import CloudKeyRecord
from . import pages
from .config import PORTAL, PortalConfig

log = logging.getLogger(__name__)

MAX_FORM_BYTES = 4096
MAX_FORM_FIELDS = 16
CSRF_COOKIE = "lp_csrf"
SESSION_COOKIE = "lp_session"
COOKIE_PATH = "/portal/"
COOKIE_VALUE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
CSP = ("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none';"
       " frame-ancestors 'none'")
_SECURITY_HEADERS = {
    "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store", "X-Frame-Options": "DENY",
}
FORM_TYPE = "application/x-www-form-urlencoded"


class PageError(Exception):
    """A request answered with a message page (and nothing changed)."""

    def __init__(self, status: int, title: str, text: str) -> None:
        super().__init__(text)
        self.status, self.title, self.text = status, title, text


@dataclass
class Visit:
    """One request to a brand's portal: who, when, and the CSRF cookie it has or gets."""

    request: web.Request
    config: PortalConfig
    brand_id: str
    brand_name: str
    now: int
    csrf_cookie: str
    new_cookie: bool

    @property
    def csrf(self) -> str:
        return self.config.keys.csrf_for(self.csrf_cookie)

    @property
    def client(self) -> str:
        header = self.config.client_header
        value = self.request.headers.get(header, "") if header else ""
        return value.split(",")[-1].strip()[:100] if value else (self.request.remote or "unknown")

    def page(self, html: str, status: int = 200) -> web.Response:
        response = web.Response(text=html, status=status, content_type="text/html", charset="utf-8",
                                headers=_SECURITY_HEADERS)
        if self.new_cookie:
            self.set_cookie(response, CSRF_COOKIE, self.csrf_cookie, None)
        return response

    def redirect(self, path: str) -> web.Response:
        response = web.Response(status=303, headers={**_SECURITY_HEADERS, "Location": path})
        if self.new_cookie:
            self.set_cookie(response, CSRF_COOKIE, self.csrf_cookie, None)
        return response

    def set_cookie(self, response: web.Response, name: str, value: str, max_age_ms: int | None) -> None:
        response.set_cookie(name, value, path=COOKIE_PATH, httponly=True, samesite="Strict",
                            secure=self.config.secure_cookies,
                            max_age=None if max_age_ms is None else max_age_ms // 1000)

    def message(self, status: int, title: str, text: str) -> web.Response:
        return self.page(pages.message(self.brand_id, self.brand_name, title, text), status)


Handler = Callable[[Visit], Awaitable[web.Response]]


def portal_handler(handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Resolve the brand and the CSRF cookie; answer every refusal as a page, never as JSON."""

    async def wrapped(request: web.Request) -> web.Response:
        config = request.app[PORTAL]
        brand_id = request.match_info["brand"]
        cookie = request.cookies.get(CSRF_COOKIE, "")
        fresh = not COOKIE_VALUE.fullmatch(cookie)
        visit = Visit(request, config, brand_id, "Rewards", request.app[CLOCK](),
                      secrets.token_urlsafe(24) if fresh else cookie, fresh)
        try:
            brands = {b.brand_id: b.name for b in await request.app[STORAGE].list_brands()}
            if brand_id not in brands:
                return visit.message(404, "Page not found", "There is no rewards program at this address.")
            visit.brand_name = brands[brand_id]
            return await handler(visit)
        except PageError as exc:
            return visit.message(exc.status, exc.title, exc.text)
        except StoreError:
            log.exception("portal %s %s: storage failed", request.method, request.path)
            return visit.message(503, "Please try again", "The service is busy right now. Try again in a minute.")

    return wrapped



# ---- inputs


async def read_form(visit: Visit) -> dict[str, str]:
    """The form fields (first value of each), after the size and CSRF checks."""
    request = visit.request
    if request.content_type != FORM_TYPE:
        raise PageError(415, "Form not understood", "Send the form from the page.")
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        raise PageError(413, "Form too large", "The form was too large.")
    body = b""
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise PageError(413, "Form too large", "The form was too large.")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PageError(400, "Form not understood", "Send the form from the page.") from exc
    form: dict[str, str] = {}
    for key, value in pairs:
        form.setdefault(key, value)
    if visit.new_cookie or not hmac.compare_digest(form.get("csrf", ""), visit.csrf):
        raise PageError(403, "Please reload the page", "This form is out of date. Go back, reload and try again.")
    return form


async def _cloud_key_version(visit: Visit, key_id: str) -> CloudKeyRecord | None:
    return next((r for r in await visit.request.app[STORAGE].cloud_keys() if r.key_id == key_id), None)


async def check_link(visit: Visit, token: str) -> SignupLink:
    """The sign-up link if its token is signed by a version of the cloud key or a live key of its store,
    and fresh."""
    signed = parse_token(token)
    link = signed.link
    if link.brand_id != visit.brand_id:
        raise ProtocolError("the link is for another brand", code="bad_link", field="t")
    cloud_key = visit.request.app[CLOUD_KEY]
    if link.key_id == cloud_key.key_id:
        signed.verify(cloud_key.public)
    elif (version := await _cloud_key_version(visit, link.key_id)) is not None:
        # Flyers printed before a cloud key rotation keep working: every version is ours.
        signed.verify(load_public_key(version.public_key))
    else:
        key = await visit.request.app[STORAGE].find_key(link.key_id)
        if (key is None or key.revoked_at is not None or key.brand_id != link.brand_id
                or key.store_id != link.store_id):
            raise ProtocolError("the link is not signed by a key of its store", code="bad_link", field="t")
        signed.verify(load_public_key(key.public_key))
    check_fresh(link, visit.now)
    return link


async def session_of(visit: Visit) -> PortalSession | None:
    token = visit.request.cookies.get(SESSION_COOKIE, "")
    if not COOKIE_VALUE.fullmatch(token):
        return None
    session = await visit.request.app[STORAGE].find_session(visit.config.keys.token_hash(token), visit.now)
    return session if session is not None and session.brand_id == visit.brand_id else None
