"""The technician's status page: server-rendered, no scripts, no customer data.

Open to the loopback interface only: a technician on the store LAN uses
``loyalty-edge status`` on the box itself, or an SSH tunnel.
"""

from __future__ import annotations

import html
import ipaddress
import shutil
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aiohttp import web

from protocol import key_id_for

from .appkeys import ADVERTISER, AUTH, CLOCK, CONFIG, STARTED, STORE, SYNC
from .errors import Forbidden, StoreError
from .health import judge
from .keyfile import KeyFileError, load_key
from .terminals import list_terminals

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def software_version() -> str:
    try:
        return version("loyalty-edge")
    except PackageNotFoundError:
        return "unknown"


def snapshot(app: web.Application) -> dict[str, Any]:
    """Everything the page, /healthz and ``loyalty-edge status`` show; no PII."""
    now = app[CLOCK]()
    config = app[CONFIG]
    store = app[STORE]
    snap: dict[str, Any] = {"store_id": config.store_id, "software_version": software_version()}
    try:
        snap["outbox"] = store.outbox_summary(int(now * 1000))
        program = store.program()
        snap["program_version"] = None if program is None else program.version
        snap["terminals"] = [
            {"terminal_id": t["terminal_id"], "name": t["name"], "last_seen": app[AUTH].last_seen.get(
                t["terminal_id"], t["last_seen"]), "revoked": t["revoked_at"] is not None}
            for t in store.read(list_terminals)
        ]
    except StoreError as exc:
        snap["store_error"] = exc.message
        snap.setdefault("outbox", {})
    sync = app[SYNC].status if SYNC in app else None
    snap["sync"] = {} if sync is None else {
        "reachable": sync.reachable,
        "last_success_at": sync.last_success_at,
        "last_error": sync.last_error,
        "next_retry_at": sync.next_retry_at,
        "batches_acked": sync.batches_acked,
        "ops_acked": sync.ops_acked,
        "ops_refused": sync.ops_refused,
        "clock_skew_ms": sync.clock_skew_ms,
    }
    snap["zeroconf"] = app[ADVERTISER].status() if ADVERTISER in app else {"advertised": False}
    try:
        snap["key_fingerprint"] = key_id_for(load_key(config.key_path).public_key())
    except KeyFileError as exc:
        snap["key_fingerprint"] = f"unreadable: {exc}"
    snap["uptime_s"] = round(now - app[STARTED], 1)
    try:
        snap["database_bytes"] = config.db_path.stat().st_size
        snap["disk_free_bytes"] = shutil.disk_usage(config.data_dir).free
    except OSError:
        snap["database_bytes"] = None
    verdict = judge(snap, now)
    snap["verdict"] = {"status": verdict.status, "reasons": verdict.reasons}
    return snap


def _ago(at: float | None, now: float) -> str:
    if at is None:
        return "never"
    return f"{max(0, int(now - at))} s ago"


async def status_page(request: web.Request) -> web.Response:
    remote = request.remote or ""
    try:
        local = ipaddress.ip_address(remote).is_loopback
    except ValueError:
        local = False
    if not local:
        raise Forbidden("the status page is open to localhost only", code="status_local_only")
    snap = snapshot(request.app)
    now = request.app[CLOCK]()
    esc = html.escape
    verdict = snap["verdict"]
    sync = snap["sync"]
    outbox = snap.get("outbox", {})
    rows = [
        ("Cloud link", "reachable" if sync.get("reachable") else "unreachable"),
        ("Last successful sync", _ago(sync.get("last_success_at"), now)),
        ("Last error", sync.get("last_error") or "none"),
        ("Next retry", _ago(sync.get("next_retry_at"), now).replace(" ago", "") if sync.get("next_retry_at") else "-"),
        ("Outbox depth", str(outbox.get("depth", "?"))),
        ("Oldest unsynced op", f"{outbox.get('oldest_age_s', 0):.0f} s"),
        ("Conflicts (refused by the cloud)", str(outbox.get("conflicts", "?"))),
        ("Zeroconf", "advertised as " + str(snap["zeroconf"].get("name")) if snap["zeroconf"].get("advertised")
         else "not advertised"),
        ("Store", snap["store_id"]),
        ("Key fingerprint", snap["key_fingerprint"]),
        ("Program version", str(snap.get("program_version"))),
        ("Software version", snap["software_version"]),
        ("Uptime", f"{snap['uptime_s']:.0f} s"),
        ("Database size", f"{(snap.get('database_bytes') or 0) / 1e6:.1f} MB"),
        ("Free disk", f"{(snap.get('disk_free_bytes') or 0) / 1e9:.1f} GB"),
        ("Clock skew vs cloud", f"{sync.get('clock_skew_ms')} ms"),
    ]
    terminals = "".join(
        f"<tr><td>{esc(t['name'])}</td><td>{esc(_ago(t['last_seen'] / 1000 if t['last_seen'] else None, now))}"
        f"</td><td>{'revoked' if t['revoked'] else 'active'}</td></tr>"
        for t in snap.get("terminals", [])
    )
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="10">
<title>Loyalty edge {esc(snap['store_id'])}: {esc(verdict['status'])}</title>
<style>body{{font-family:sans-serif;margin:1em;max-width:50em}}td{{padding:.2em .6em;vertical-align:top}}
.ok{{background:#d4f7d4}}.degraded{{background:#fff1c1}}.failing{{background:#ffd0d0}}
#verdict{{padding:.6em;font-size:1.3em}}</style></head>
<body><div id="verdict" class="{esc(verdict['status'])}"><b>{esc(verdict['status'].upper())}</b>:
{esc('; '.join(verdict['reasons']))}</div>
<table id="facts">{''.join(f'<tr><th align="left">{esc(k)}</th><td>{esc(v)}</td></tr>' for k, v in rows)}</table>
<h2>Terminals</h2><table id="terminals"><tr><th>Name</th><th>Last seen</th><th>State</th></tr>{terminals}</table>
<p><small>Rendered {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))}</small></p>
</body></html>"""
    return web.Response(
        text=body,
        content_type="text/html",
        headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"},
    )
