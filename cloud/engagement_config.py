"""``loyalty-cloud serve`` options for the portal and the message senders.

Each option falls back to an environment variable (``LOYALTY_CLOUD_<NAME>``),
then to a default that runs with nothing else installed: the file sender
(JSON lines in ``DIR/messages.jsonl``) for both channels, the portal at the
address the cloud listens on, and a portal secret created in
``DIR/portal.secret`` (mode 0600). A bad value stops start-up naming its
option, before anything listens.
"""

from __future__ import annotations

import argparse
import os
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

from protocol.normalize import is_region

from .engagement import Engagement
from .errors import ConfigError
from .otp import PortalKeys
from .portal import PORTAL_SECRET_FILE, PortalConfig
from .secret_files import load_or_create_secret, load_secret
from .senders import FileSender, Sender, Senders, SmsGatewaySender, SmtpSender

MESSAGES_FILE = "messages.jsonl"
ENV_PREFIX = "LOYALTY_CLOUD_"


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV_PREFIX + name) or default


def add_engagement_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("portal and messages (each also LOYALTY_CLOUD_<NAME> in the environment)")
    group.add_argument("--portal-url", default=_env("PORTAL_URL"), metavar="URL",
                       help="the address customers reach the portal at (default: where this serves)")
    group.add_argument("--portal-region", default=_env("PORTAL_REGION"), metavar="CC",
                       help="region of phone numbers typed without a country code, e.g. CA")
    group.add_argument("--portal-client-header", default=_env("PORTAL_CLIENT_HEADER"), metavar="NAME",
                       help="header a trusted proxy puts the client address in, e.g. X-Forwarded-For")
    group.add_argument("--portal-secret-file", type=Path, default=_env("PORTAL_SECRET_FILE"), metavar="FILE",
                       help=f"keys the portal's hashes (default DIR/{PORTAL_SECRET_FILE}, created 0600)")
    group.add_argument("--email-via", choices=["file", "smtp"], default=_env("EMAIL_VIA", "file"))
    group.add_argument("--sms-via", choices=["file", "gateway"], default=_env("SMS_VIA", "file"))
    group.add_argument("--messages-file", type=Path, default=_env("MESSAGES_FILE"), metavar="FILE",
                       help=f"the file sender's JSON lines (default DIR/{MESSAGES_FILE})")
    group.add_argument("--smtp-host", default=_env("SMTP_HOST"))
    group.add_argument("--smtp-port", type=int, default=int(_env("SMTP_PORT", "25") or 25))
    group.add_argument("--smtp-from", default=_env("SMTP_FROM"), metavar="ADDRESS")
    group.add_argument("--smtp-starttls", action="store_true", default=_env("SMTP_STARTTLS") == "1")
    group.add_argument("--sms-gateway-url", default=_env("SMS_GATEWAY_URL"), metavar="URL")
    group.add_argument("--sms-key-file", type=Path, default=_env("SMS_KEY_FILE"), metavar="FILE",
                       help="the gateway's API key, in a file of mode 0600")
    group.add_argument("--no-dispatch", action="store_true", default=_env("NO_DISPATCH") == "1",
                       help="serve the portal but leave sending messages to another process")


def check_base_url(url: str, field: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"{url!r} is not an http(s) base URL", field=field)
    return url.rstrip("/")


def _make_senders(args: argparse.Namespace, data: Path, sms_key: str | None) -> Senders:
    file_sender = FileSender(args.messages_file or data / MESSAGES_FILE)
    email: Sender = file_sender
    if args.email_via == "smtp":
        email = SmtpSender(args.smtp_host, args.smtp_port, args.smtp_from, starttls=args.smtp_starttls)
    phone: Sender = file_sender
    if args.sms_via == "gateway" and sms_key is not None:
        phone = SmsGatewaySender(args.sms_gateway_url, sms_key)
    return Senders(email, phone)


def engagement_from(args: argparse.Namespace, data: Path, listen_url: str) -> Engagement:
    """The portal and senders ``serve`` runs with; ConfigError naming the option at fault."""
    if args.email_via == "smtp":
        if not args.smtp_host:
            raise ConfigError("--email-via smtp needs --smtp-host", field="smtp_host")
        if not args.smtp_from or "@" not in args.smtp_from:
            raise ConfigError("--email-via smtp needs --smtp-from with an address", field="smtp_from")
        if not 0 < args.smtp_port < 65536:
            raise ConfigError("--smtp-port must be 1..65535", field="smtp_port")
    sms_key = None
    if args.sms_via == "gateway":
        if not args.sms_gateway_url:
            raise ConfigError("--sms-via gateway needs --sms-gateway-url", field="sms_gateway_url")
        check_base_url(args.sms_gateway_url, "sms_gateway_url")
        if args.sms_key_file is None:
            raise ConfigError("--sms-via gateway needs --sms-key-file", field="sms_key_file")
        sms_key = load_secret(args.sms_key_file, "sms_key_file").decode("ascii", "replace")
    if args.portal_region is not None and not is_region(args.portal_region):
        raise ConfigError(f"{args.portal_region!r} is not a region code such as CA or FR", field="portal_region")
    secret = load_or_create_secret(args.portal_secret_file or data / PORTAL_SECRET_FILE, "portal_secret_file")
    if len(secret) < 16:
        raise ConfigError("the portal secret file must hold at least 16 bytes", field="portal_secret_file")
    portal = PortalConfig(
        base_url=check_base_url(args.portal_url or listen_url, "portal_url"),
        keys=PortalKeys(secret),
        default_region=args.portal_region,
        client_header=args.portal_client_header,
    )
    return Engagement(portal, partial(_make_senders, args, data, sms_key), dispatch=not args.no_dispatch)
