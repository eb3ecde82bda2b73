"""Wires the portal and the message dispatcher into the cloud app (cleanup_ctx blocks).

``Engagement`` is what ``loyalty-cloud serve`` decides from its options: the
portal's settings, how to make the senders (opened with the app, closed
after it), and whether this process dispatches messages. Every process may
dispatch: claims keep two dispatchers off the same message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from aiohttp import web

from .api import CLOCK, STORAGE
from .dispatcher import Dispatcher, RetryPolicy
from .errors import StoreError
from .otp import LIMIT_WINDOW_MS
from .portal import PORTAL, SENDERS, PortalConfig, add_portal_routes
from .senders import Senders

log = logging.getLogger(__name__)

PRUNE_INTERVAL_S = 3600.0


@dataclass(frozen=True, slots=True)
class Engagement:
    portal: PortalConfig
    make_senders: Callable[[], Senders]
    dispatch: bool = True
    idle_s: float = 1.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


async def _prune(app: web.Application) -> None:
    while True:
        try:
            gone = await app[STORAGE].prune_portal(app[CLOCK](), LIMIT_WINDOW_MS)
            if gone:
                log.info("portal: pruned %d expired codes, sessions and counters", gone)
        except StoreError:
            log.exception("portal: pruning failed")
        await asyncio.sleep(PRUNE_INTERVAL_S)


def add_engagement(app: web.Application, engagement: Engagement) -> None:
    """The portal routes, the senders and (unless turned off) the dispatcher, after the ledger opens."""
    app[PORTAL] = engagement.portal

    async def senders_ctx(app: web.Application) -> AsyncIterator[None]:
        app[SENDERS] = engagement.make_senders()
        try:
            yield
        finally:
            await app[SENDERS].close()

    async def tasks_ctx(app: web.Application) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(_prune(app), name="portal-prune")]
        if engagement.dispatch:
            dispatcher = Dispatcher(app[STORAGE], app[SENDERS], portal_url=engagement.portal.brand_url,
                                    retry=engagement.retry)
            tasks.append(asyncio.create_task(dispatcher.run(app[CLOCK], idle_s=engagement.idle_s),
                                             name="message-dispatcher"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app.cleanup_ctx.append(senders_ctx)
    app.cleanup_ctx.append(tasks_ctx)
    add_portal_routes(app)
