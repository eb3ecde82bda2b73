"""Typed keys for what the edge's aiohttp application holds."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from .config import EdgeConfig
from .store import EdgeStore
from .sync import SyncTask
from .terminals import TerminalAuth

if TYPE_CHECKING:
    from .zeroconf_service import EdgeAdvertiser

CONFIG = web.AppKey("config", EdgeConfig)
STORE = web.AppKey("store", EdgeStore)
AUTH = web.AppKey("auth", TerminalAuth)
SYNC = web.AppKey("sync", SyncTask)
ADVERTISER: web.AppKey[EdgeAdvertiser] = web.AppKey("advertiser")
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
STARTED = web.AppKey("started", float)
TERMINAL_ID = web.RequestKey("terminal_id", str)
