"""The cloud's aiohttp application: one cleanup_ctx block per resource.

``make_app`` takes an already loaded cloud key (so a bad key fails before
anything listens) and a storage factory (SQLite or PostgreSQL, see
``config.make_storage``), and opens the ledger when the app starts. It
embeds ``workers`` reconcilers (``worker.Worker``, one by default; 0 when
``loyalty-cloud reconcile`` runs them instead), which stop after the batch in
hand when the app shuts down. ``serve`` binds,
prints ``listening on http://HOST:PORT`` (the real port, also for port 0) and
leaves SIGTERM/SIGINT to ``web.run_app``, which stops accepting, lets
in-flight requests finish, then runs the cleanups (closing the database).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from . import admin_api, csv_api, enrollment_api, report_api
from .api import CLOCK, CLOUD_KEY, MAX_BATCH_BYTES, SERVICE, STORAGE, add_routes, error_middleware
from .engagement import Engagement, add_engagement
from .handoff import Handoff
from .keys import CloudKey
from .metrics import METRICS, CloudMetrics, MeteredSyncService, metrics_handler
from .service import ACK_WAIT
from .storage import Storage
from .worker import Applied, Worker

#: How long shutdown waits for an embedded worker to finish its batch before cancelling it.
WORKER_STOP_TIMEOUT = 30.0

log = logging.getLogger(__name__)


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def make_app(
    storage_factory: Callable[[], Storage],
    cloud_key: CloudKey,
    *,
    clock: Callable[[], int] = wall_clock_ms,
    workers: int = 1,
    ack_wait: float = ACK_WAIT,
    engagement: Engagement | None = None,
) -> web.Application:
    # The envelope bound plus room for headers' worth of slack; read_body enforces the exact limits.
    app = web.Application(middlewares=[error_middleware, admin_api.admin_auth], client_max_size=MAX_BATCH_BYTES + 1024)
    app[CLOUD_KEY] = cloud_key
    app[CLOCK] = clock
    app[METRICS] = CloudMetrics()

    async def storage_ctx(app: web.Application) -> AsyncIterator[None]:
        storage = storage_factory()
        await storage.open(app[CLOCK]())
        app[STORAGE] = storage
        log.info("ledger %r open", storage)
        try:
            yield
        finally:
            await storage.close()
            log.info("ledger %r closed", storage)

    async def service_ctx(app: web.Application) -> AsyncIterator[None]:
        handoff = Handoff(app[STORAGE])
        app[SERVICE] = MeteredSyncService(
            app[STORAGE], app[CLOUD_KEY], app[CLOCK], app[METRICS], handoff=handoff, ack_wait=ack_wait
        )
        metrics = app[METRICS]

        def applied(done: Applied) -> None:
            handoff.applied(done.store_id, done.seq, done.ack)
            metrics.applied(done)

        embedded = [Worker(app[STORAGE], app[CLOUD_KEY], app[CLOCK], on_applied=applied, decoded=handoff.decoded)
                    for _ in range(workers)]
        tasks = [asyncio.create_task(w.run(handoff.work), name=f"reconciler-{i}") for i, w in enumerate(embedded)]
        try:
            yield
        finally:
            for worker in embedded:
                worker.stop()
            if tasks:
                _, late = await asyncio.wait(tasks, timeout=WORKER_STOP_TIMEOUT)
                for task in late:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await handoff.close()

    app.cleanup_ctx.append(storage_ctx)
    app.cleanup_ctx.append(service_ctx)
    add_routes(app)
    admin_api.add_routes(app)
    enrollment_api.add_routes(app)
    report_api.add_routes(app)
    csv_api.add_routes(app)
    app.router.add_get("/metrics", metrics_handler)
    if engagement is not None:  # the portal and the message dispatcher, once the ledger is open
        add_engagement(app, engagement)
    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; binding here (not in run_app) tells us the port when 0 was asked."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, type_, proto, _, addr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(
    app: web.Application,
    sock: socket.socket,
    *,
    on_listening: Callable[[str], None],
    shutdown_timeout: float = 10.0,
) -> None:
    """Run until SIGTERM/SIGINT; ``on_listening(url)`` once the ledger is open."""
    url = url_of(sock)

    async def announce(app: web.Application) -> None:
        # on_startup runs after the cleanup_ctx blocks: the ledger is open by now.
        log.info("listening on %s", url)
        on_listening(url)

    app.on_startup.append(announce)
    web.run_app(app, sock=sock, print=None, shutdown_timeout=shutdown_timeout, handle_signals=True)
