"""The self-enrollment portal: server-rendered pages where customers join, sign in
with a one-time code, see their points and choose which messages they get."""

from .config import PORTAL, PORTAL_SECRET_FILE, SENDERS, PortalConfig
from .routes import add_portal_routes

__all__ = ["PORTAL", "PORTAL_SECRET_FILE", "SENDERS", "PortalConfig", "add_portal_routes"]
