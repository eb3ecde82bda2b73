"""Find edges on the LAN: the terminal side of the DNS-SD advertisement."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from zeroconf import Error as ZeroconfLibraryError
from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from .zeroconf_service import SERVICE_TYPE, ZeroconfError, ip_version_for

logger = logging.getLogger(__name__)

#: Seconds without news, once something was found, after which discovery stops early.
DEFAULT_SETTLE = 1.0
#: Longest wait for one edge's SRV/TXT/A records, in milliseconds.
RESOLVE_TIMEOUT_MS = 3000


@dataclass(frozen=True, slots=True)
class DiscoveredEdge:
    name: str
    addresses: tuple[str, ...]
    port: int
    store_id: str | None
    api: str | None
    fingerprint: str | None

    @property
    def url(self) -> str:
        """Base URL on the first address (IPv4 first)."""
        address = ipaddress.ip_address(self.addresses[0])
        host = f"[{address}]" if address.version == 6 else str(address)
        return f"http://{host}:{self.port}"


def edge_from_info(info: AsyncServiceInfo) -> DiscoveredEdge | None:
    """The edge a resolved service describes, or None if it lacks a port or an address."""
    addresses = tuple(info.parsed_addresses(IPVersion.V4Only) + info.parsed_addresses(IPVersion.V6Only))
    if not info.port or not addresses:
        return None
    props = info.decoded_properties
    suffix = "." + SERVICE_TYPE
    name = info.name[: -len(suffix)] if info.name.endswith(suffix) else info.name
    return DiscoveredEdge(
        name=name,
        addresses=addresses,
        port=info.port,
        store_id=props.get("store"),
        api=props.get("api"),
        fingerprint=props.get("fp"),
    )


class _Browse:
    """Collects resolved edges while a browser runs."""

    def __init__(self, zc: Zeroconf, store_id: str | None) -> None:
        self._zc = zc
        self._store_id = store_id
        self._loop = asyncio.get_running_loop()
        self.found: dict[str, DiscoveredEdge] = {}
        self.pending: set[asyncio.Task[None]] = set()
        self.changed = asyncio.Event()
        self.last_change = self._loop.time()
        self.closed = False

    def on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if self.closed:
            return
        if state_change is ServiceStateChange.Removed:
            if self.found.pop(name, None) is not None:
                self._touch()
            return
        task = self._loop.create_task(self._resolve(name))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _resolve(self, name: str) -> None:
        try:
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if not await info.async_request(self._zc, RESOLVE_TIMEOUT_MS):
                logger.debug("mDNS: %s did not resolve", name)
                return
            edge = edge_from_info(info)
            if edge is None or (self._store_id is not None and edge.store_id != self._store_id):
                return
            if self.found.get(name) != edge:
                self.found[name] = edge
                self._touch()
        except (ZeroconfLibraryError, OSError) as exc:
            logger.debug("mDNS: resolving %s failed: %s", name, exc)
        finally:
            self.changed.set()

    def _touch(self) -> None:
        self.last_change = self._loop.time()
        self.changed.set()

    async def wait(self, duration: float, settle: float) -> None:
        deadline = self._loop.time() + duration
        while True:
            now = self._loop.time()
            if now >= deadline:
                return
            settled = bool(self.found) and not self.pending
            if settled and now - self.last_change >= settle:
                return
            wake = min(deadline, self.last_change + settle) if settled else deadline
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), max(0.0, wake - now))

    async def close(self) -> None:
        self.closed = True
        for task in self.pending:
            task.cancel()
        await asyncio.gather(*self.pending, return_exceptions=True)


async def discover_edges(
    timeout: float,  # noqa: ASYNC109 - how long to browse; what was found by then is the answer, not an error
    interfaces: Sequence[str] | None = None,
    store_id: str | None = None,
    *,
    settle: float = DEFAULT_SETTLE,
) -> list[DiscoveredEdge]:
    """Browse for edges for at most ``timeout`` seconds.

    Returns early once at least one edge was found and nothing changed for
    ``settle`` seconds. With ``store_id``, only that store's edges count.
    """
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    try:
        aiozc = AsyncZeroconf(
            interfaces=InterfaceChoice.All if interfaces is None else list(interfaces),
            ip_version=ip_version_for(interfaces),
        )
    except (ZeroconfLibraryError, OSError, ValueError) as exc:
        raise ZeroconfError(f"cannot open mDNS on {interfaces or 'all interfaces'}: {exc}") from exc
    browse = _Browse(aiozc.zeroconf, store_id)
    try:
        browser = AsyncServiceBrowser(aiozc.zeroconf, SERVICE_TYPE, handlers=[browse.on_change])
        try:
            await browse.wait(timeout, settle)
        finally:
            await browser.async_cancel()
    finally:
        await browse.close()
        await aiozc.async_close()
    return sorted(browse.found.values(), key=lambda e: (e.store_id or "", e.name))


def format_edges(edges: Sequence[DiscoveredEdge]) -> str:
    """A plain-text table for the CLI."""
    if not edges:
        return "no edges found"
    rows = [("NAME", "STORE", "URL", "API", "FINGERPRINT")]
    rows += [(e.name, e.store_id or "-", e.url, e.api or "-", e.fingerprint or "-") for e in edges]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    )
