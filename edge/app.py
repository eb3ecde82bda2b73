"""The edge daemon: one aiohttp application, one cleanup context per resource.

Start-up order is store → sync task → zeroconf, and shutdown runs in
reverse: we stop being advertised first, stop syncing, and close the store
last, after the writer has committed every write it accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from protocol import key_id_for, load_public_key

from .api import add_routes, terminal_middleware
from .appkeys import ADVERTISER, AUTH, CLOCK, CONFIG, STARTED, STORE, SYNC
from .backup import serving_lock
from .cloud_client import CloudClient
from .config import EdgeConfig
from .errors import StoreError
from .history import HISTORY, History
from .history import SAMPLE_EVERY_S as HISTORY_SAMPLE_S
from .keyfile import load_key
from .metrics import METRICS, MetricsAccessLogger, install, metrics_handler
from .outbox import Identity, prune
from .store import EdgeStore
from .sync import SyncTask
from .systemd_notify import Notifier
from .technician import GATE, TechnicianGate
from .terminals import TerminalAuth

log = logging.getLogger(__name__)
LAST_SEEN_FLUSH_S = 30.0
ADDRESS_CHECK_S = 10.0
PRUNE_EVERY_S = 3600.0


def build_app(config: EdgeConfig, *, port: int, clock: Callable[[], float] = time.time) -> web.Application:
    app = web.Application(middlewares=[terminal_middleware], client_max_size=64 * 1024)
    app[CONFIG] = config
    app[CLOCK] = clock
    app[STARTED] = clock()
    install(app)
    app[HISTORY] = History()
    app[GATE] = TechnicianGate(config.technician_password_hash)
    add_routes(app)
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_sync_ctx)
    app.cleanup_ctx.append(_housekeeping_ctx)
    app.cleanup_ctx.append(_history_ctx)
    if config.zeroconf:
        app.cleanup_ctx.append(_zeroconf_ctx(port))
    return app


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = EdgeStore(app[CONFIG].db_path)
    await store.open()
    store.writer.observer = app[METRICS].observe_commit
    app[STORE] = store
    app[AUTH] = TerminalAuth(store)
    yield
    await store.close()


async def _sync_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    store = app[STORE]
    key = load_key(config.key_path)
    identity = Identity(
        store_id=config.store_id,
        node_id=store.meta("node_id"),
        key_id=key_id_for(key.public_key()),
        private_key=key,
    )
    client = CloudClient(config.cloud_url)
    sync = SyncTask(
        store,
        client,
        identity,
        load_public_key(config.cloud_key_bytes()),
        clock=app[CLOCK],
        batch_size=config.batch_size,
        interval=config.sync_interval,
        key_path=config.key_path,
    )
    app[SYNC] = sync
    task = asyncio.create_task(sync.run(), name="edge-sync")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await client.close()


async def _housekeeping_ctx(app: web.Application) -> AsyncIterator[None]:
    """Terminals' last-seen times to disk, and hourly pruning of old rows."""

    async def flush_forever() -> None:
        last_prune = 0.0
        while True:
            await asyncio.sleep(LAST_SEEN_FLUSH_S)
            await app[STORE].write(app[AUTH].flush_last_seen())
            now = app[CLOCK]()
            if now - last_prune >= PRUNE_EVERY_S:
                pruned = await app[STORE].write(prune(int(now * 1000)))
                log.info("pruned %s", pruned)
                last_prune = now

    task = asyncio.create_task(flush_forever(), name="edge-housekeeping")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await app[STORE].write(app[AUTH].flush_last_seen())


async def _history_ctx(app: web.Application) -> AsyncIterator[None]:
    """One sample a minute for the status page's chart."""

    async def sample_forever() -> None:
        while True:
            app[HISTORY].sample(app[STORE], app[CLOCK]())
            await asyncio.sleep(HISTORY_SAMPLE_S)

    task = asyncio.create_task(sample_forever(), name="edge-history")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _zeroconf_ctx(port: int) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        from .zeroconf_service import EdgeAdvertiser, ZeroconfError  # imported only when enabled

        config = app[CONFIG]
        key = load_key(config.key_path)
        advertiser = EdgeAdvertiser(
            interfaces=list(config.interfaces) or None,
            addresses=None,  # follow the interfaces' addresses as DHCP changes them
            port=port,
            store_id=config.store_id,
            fingerprint=key_id_for(key.public_key()),
        )
        app[ADVERTISER] = advertiser
        try:
            await advertiser.start()
        except ZeroconfError as exc:
            # Terminals with a configured address still work: serve, and show it.
            log.error("not advertised over mDNS: %s", exc)

        async def watch() -> None:
            while True:
                await asyncio.sleep(ADDRESS_CHECK_S)
                try:
                    await advertiser.check_addresses()
                except ZeroconfError as exc:
                    log.warning("mDNS re-registration failed: %s", exc)

        task = asyncio.create_task(watch(), name="edge-zeroconf-watch")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await advertiser.stop()

    return ctx


def make_runner(app: web.Application) -> web.AppRunner:
    """The runner ``serve`` uses: no access log (its lines would carry phone
    numbers and emails from query strings), but the access-log hook feeds
    the request metrics with the time aiohttp already measured."""
    return web.AppRunner(
        app, handle_signals=False, shutdown_timeout=10.0,
        access_log_class=MetricsAccessLogger, access_log=logging.getLogger("edge.access"),
    )


def metrics_app(app: web.Application) -> web.Application:
    """/metrics on a listener of its own, outside the terminal API and its auth."""
    side = web.Application()
    side[METRICS] = app[METRICS]
    side.router.add_get("/metrics", metrics_handler)
    return side


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind and listen before start-up, so zeroconf can advertise the real port.

    Connections that arrive before the site starts wait in the backlog.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def store_answers(app: web.Application) -> bool:
    """True while the database answers a read (what the systemd watchdog vouches for)."""
    try:
        app[STORE].read(lambda c: c.execute("SELECT COUNT(*) FROM meta").fetchone())
    except StoreError as exc:
        log.error("watchdog: the store does not answer: %s", exc)
        return False
    return True


async def serve(
    config: EdgeConfig, *, on_ready: Callable[[str], None] | None = None, notifier: Notifier | None = None
) -> None:
    """Run until SIGTERM or SIGINT, then drain and close everything.

    systemd hears READY=1 only once the store is migrated and open (the
    store context), the sync task runs, zeroconf has been registered (or has
    failed, which is logged and shown on /status) and the site is serving.
    """
    with serving_lock(config.data_dir):  # restore refuses while we hold it
        await _serve(config, on_ready, notifier or Notifier())


async def _serve(config: EdgeConfig, on_ready: Callable[[str], None] | None, notifier: Notifier) -> None:
    sock = bind_socket(config.host, config.port)
    port = sock.getsockname()[1]
    app = build_app(config, port=port)
    runner = make_runner(app)
    side = web.AppRunner(metrics_app(app), handle_signals=False, access_log=None)
    host = f"[{config.host}]" if ":" in config.host else config.host
    url = f"http://{host}:{port}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watchdog: asyncio.Task[None] | None = None
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
        if config.metrics_port:
            await side.setup()
            await web.TCPSite(side, config.metrics_host, config.metrics_port).start()
            log.info("metrics on http://%s:%d/metrics", config.metrics_host, config.metrics_port)
        log.info("edge listening on %s", url)
        if on_ready is not None:
            on_ready(url)
        notifier.ready(f"serving terminals on {url}")
        watchdog = asyncio.create_task(notifier.watchdog(lambda: store_answers(app)), name="edge-watchdog")
        await stop.wait()
        log.info("stopping: draining requests and the writer")
    finally:
        notifier.stopping()
        if watchdog is not None:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        await side.cleanup()
        await runner.cleanup()

