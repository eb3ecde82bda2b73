"""The technician's status page: server-rendered, no scripts, no customer data.

Open to the loopback interface; on the store LAN only when the config holds
a technician password hash, with HTTP Basic (edge.technician). Customer
data never appears: terminals, counts, codes and times only.
"""

from __future__ import annotations

import html
import shutil
import sqlite3
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from aiohttp import web

from protocol import key_id_for

from .appkeys import ADVERTISER, AUTH, CLOCK, CONFIG, STARTED, STORE, SYNC
from .errors import Forbidden, StoreError, TooManyRequests, Unauthorized
from .health import judge
from .history import HISTORY, render_chart
from .keyfile import KeyFileError, load_key
from .metrics import metrics_handler
from .technician import GATE, REALM
from .terminals import list_terminals

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def software_version() -> str:
    try:
        return version("loyalty-edge")
    except PackageNotFoundError:
        return "unknown"


DISK_USAGE: web.AppKey[Callable[[Path], tuple[int, int, int]]] = web.AppKey("disk_usage")


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
        snap["recent_conflicts"] = store.read(_recent_conflicts)
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
        "refused": sync.refused,
        "cloud_key_id": sync.cloud_key_id,
        "cloud_key_version": sync.cloud_key_version,
    }
    snap["zeroconf"] = app[ADVERTISER].status() if ADVERTISER in app else {"advertised": False}
    try:
        snap["key_fingerprint"] = key_id_for(load_key(config.key_path).public_key())
    except KeyFileError as exc:
        snap["key_fingerprint"] = f"unreadable: {exc}"
    snap["uptime_s"] = round(now - app[STARTED], 1)
    try:
        snap["database_bytes"] = config.db_path.stat().st_size
        total, _used, free = app.get(DISK_USAGE, shutil.disk_usage)(config.data_dir)
        snap["disk_free_bytes"], snap["disk_total_bytes"] = free, total
    except OSError:
        snap["database_bytes"] = None
    verdict = judge(snap, now)
    snap["verdict"] = {"status": verdict.status, "reasons": verdict.reasons}
    return snap


def _recent_conflicts(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """The newest refused ops, without the customer: what, how much, why, where, when."""
    rows = conn.execute(
        "SELECT c.kind, c.points, c.code, COALESCE(t.name, c.terminal_id), c.recorded_at FROM conflicts c "
        "LEFT JOIN terminals t ON t.terminal_id = c.terminal_id ORDER BY c.recorded_at DESC LIMIT 5"
    ).fetchall()
    keys = ("kind", "points", "code", "terminal", "recorded_at")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def _ago(at: float | None, now: float) -> str:
    if at is None:
        return "never"
    seconds = max(0, int(now - at))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def _cloud_key(sync: dict[str, Any]) -> str:
    if not sync.get("cloud_key_id"):
        return "not checked yet"
    version = sync.get("cloud_key_version")
    return f"{sync['cloud_key_id']} (version {version})" if version else sync["cloud_key_id"]


def _size(n: int | None) -> str:
    if n is None:
        return "unknown"
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


async def _refuse(request: web.Request) -> web.Response | None:
    """None if this peer may see the page; else the answer to send."""
    gate = request.app.get(GATE)
    verdict = "local_only" if gate is None else await gate.check(request.remote, request.headers.get("Authorization"))
    if verdict == "ok":
        return None
    if verdict == "local_only":
        raise Forbidden("the status page is open to localhost only (set a technician password to open it on the "
                        "LAN)", code="status_local_only")
    if verdict == "slow_down":
        raise TooManyRequests("too many wrong technician passwords; wait a minute", code="status_rate_limited")
    error = Unauthorized("the technician password is required", code="technician_password_required")
    return web.json_response(error.to_json(), status=401, headers={"WWW-Authenticate": REALM})


async def status_page(request: web.Request) -> web.Response:
    refused = await _refuse(request)
    if refused is not None:
        return refused
    snap = snapshot(request.app)
    now = request.app[CLOCK]()
    esc = html.escape
    verdict = snap["verdict"]
    sync = snap["sync"]
    outbox = snap.get("outbox", {})
    zc = snap["zeroconf"]
    skew = sync.get("clock_skew_ms")
    free, total = snap.get("disk_free_bytes"), snap.get("disk_total_bytes")
    rows = [
        ("cloud", "Cloud link", {True: "reachable", False: "unreachable"}.get(sync.get("reachable"), "not tried yet")),
        ("last-sync", "Last successful sync", _ago(sync.get("last_success_at"), now)),
        ("last-error", "Last error", sync.get("last_error") or "none"),
        ("next-retry", "Next retry",
         f"in {max(0, int(sync['next_retry_at'] - now))} s" if sync.get("next_retry_at") else "-"),
        ("outbox-depth", "Outbox depth", str(outbox.get("depth", "?"))),
        ("outbox-age", "Oldest unsynced op", _ago(now - outbox["oldest_age_s"], now).replace(" ago", "")
         if outbox.get("depth") else "none waiting"),
        ("conflicts", "Conflicts awaiting attention", str(outbox.get("conflicts", "?"))),
        ("zeroconf", "Zeroconf", f"advertised as {zc.get('name')} on "
         f"{', '.join(zc.get('addresses') or ['no address yet'])} port {zc.get('port')}"
         if zc.get("advertised") else "not advertised"),
        ("store", "Store", snap["store_id"]),
        ("key", "Key fingerprint", snap["key_fingerprint"]),
        ("cloud-key", "Cloud key", _cloud_key(sync)),
        ("program", "Program version", str(snap.get("program_version") or "none yet")),
        ("software", "Software version", snap["software_version"]),
        ("uptime", "Uptime", _ago(now - snap["uptime_s"], now).replace(" ago", "")),
        ("db-size", "Database size", _size(snap.get("database_bytes"))),
        ("disk-free", "Free disk", f"{_size(free)} ({100 * free / total:.1f} %)" if free is not None and total
         else "unknown"),
        ("clock-skew", "Clock skew vs cloud", "unknown (no ack yet)" if skew is None else f"{skew / 1000:+.1f} s"),
    ]
    terminals = "".join(
        f"<tr><td>{esc(t['name'])}</td><td>{esc(_ago(t['last_seen'] / 1000 if t['last_seen'] else None, now))}"
        f"</td><td>{'revoked' if t['revoked'] else 'active'}</td></tr>"
        for t in snap.get("terminals", [])
    ) or '<tr><td colspan="3">no terminal paired yet (<code>loyalty-edge pair</code>)</td></tr>'
    conflicts = "".join(
        f"<tr><td>{esc(c['kind'])}</td><td>{c['points']}</td><td>{esc(c['code'])}</td><td>{esc(c['terminal'])}</td>"
        f"<td>{esc(_ago(c['recorded_at'] / 1000, now))}</td></tr>"
        for c in snap.get("recent_conflicts", [])
    )
    chart = render_chart(request.app[HISTORY]) if HISTORY in request.app else ""
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="10">
<title>Loyalty edge {esc(snap['store_id'])}: {esc(verdict['status'])}</title>
<style>*{{box-sizing:border-box}}body{{font-family:sans-serif;margin:.8em;max-width:50em}}
td,th{{padding:.2em .5em;vertical-align:top;overflow-wrap:anywhere;
text-align:left}}table{{border-collapse:collapse;width:100%}}tr{{border-bottom:1px solid #ddd}}
.ok{{background:#d4f7d4}}.degraded{{background:#fff1c1}}.failing{{background:#ffd0d0}}
#verdict{{padding:.6em;font-size:1.3em;border-radius:.3em}}figure{{margin:.5em 0}}</style></head>
<body><div id="verdict" class="{esc(verdict['status'])}"><b id="verdict-status">{esc(verdict['status'].upper())}</b>:
<span id="verdict-reasons">{esc('; '.join(verdict['reasons']))}</span></div>
<table id="facts">{''.join(f'<tr id="row-{k}"><th>{esc(label)}</th><td>{esc(v)}</td></tr>' for k, label, v in rows)}
</table>
<h2>Last hour</h2><div id="chart">{chart}</div>
<h2>Conflicts awaiting attention</h2>
<p>Ops the cloud refused (most often a redemption spent twice while offline); see them with
<code>GET /v1/conflicts</code> or in the cloud.</p>
<table id="conflicts"><tr><th>Op</th><th>Points</th><th>Reason</th><th>Terminal</th><th>Recorded</th></tr>
{conflicts}</table>
<h2>Terminals</h2><table id="terminals"><tr><th>Name</th><th>Last seen</th><th>State</th></tr>{terminals}</table>
<p><small>Rendered {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))}; refreshes every 10 s.</small></p>
</body></html>"""
    return web.Response(
        text=body,
        content_type="text/html",
        headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
                 "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"},
    )


async def gated_metrics(request: web.Request) -> web.Response:
    """/metrics on the main port, behind the status page's rule (localhost, or
    the technician password on the LAN). ``metrics_port`` adds a listener of
    its own for scrapers that cannot log in."""
    refused = await _refuse(request)
    if refused is not None:
        return refused
    return await metrics_handler(request)
