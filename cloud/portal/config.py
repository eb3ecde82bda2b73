"""The portal's settings and the app keys it and the dispatcher share."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ..otp import PortalKeys
from ..senders import Senders

PORTAL_SECRET_FILE = "portal.secret"
SESSION_TTL_MS = 2 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class PortalConfig:
    """``base_url`` is what customers reach (links, messages, and Secure cookies when https);
    ``default_region`` reads phone numbers typed without a country code; ``client_header``
    names the header a trusted proxy puts the client's address in (else the peer address)."""

    base_url: str
    keys: PortalKeys
    default_region: str | None = None
    client_header: str | None = None
    session_ttl_ms: int = SESSION_TTL_MS

    @property
    def secure_cookies(self) -> bool:
        return self.base_url.startswith("https://")

    def brand_url(self, brand_id: str) -> str:
        return f"{self.base_url.rstrip('/')}/portal/{brand_id}"


PORTAL = web.AppKey("portal", PortalConfig)
SENDERS = web.AppKey("senders", Senders)
