"""Advertise the edge's HTTP API on the store LAN with mDNS / DNS-SD.

POS terminals find their edge by browsing ``_loyalty-edge._tcp.local.``. The
TXT record carries the API version, the store id and the edge's key
fingerprint, so a terminal can skip an edge of another store (or one that
speaks another API version) before it sends a single request.

Store networks hand out addresses by DHCP, so the daemon calls
:meth:`EdgeAdvertiser.check_addresses` every few seconds; the advertisement
follows the interfaces' current addresses without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import ifaddr
from zeroconf import Error as ZeroconfLibraryError
from zeroconf import InterfaceChoice, IPVersion
from zeroconf._protocol.outgoing import DNSOutgoing  # re-exported by zeroconf, but not in its __all__
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from protocol import ProtocolError
from protocol.messages import check_slug

logger = logging.getLogger(__name__)

SERVICE_TYPE = "_loyalty-edge._tcp.local."
API_VERSION = "1"
API_PATH = "/v1"

#: A DNS label holds 63 bytes; zeroconf appends "-N" to rename on a conflict.
MAX_INSTANCE_BYTES = 63 - 7
MAX_TXT_VALUE_BYTES = 200
#: DNS header flags of an authoritative response (QR and AA, RFC 6762 section 18).
_RESPONSE_FLAGS = 0x8000 | 0x0400
#: python-zeroconf holds multicast answers up to 500 ms to aggregate them, and
#: those answers were built when the question came: one queued just before an
#: address change carries the old address after our goodbye. A second goodbye,
#: once that queue has drained, withdraws it for good.
_REPEAT_GOODBYE_S = 1.0

AdapterSource = Callable[[], Iterable[ifaddr.Adapter]]


class ZeroconfError(Exception):
    """The edge could not advertise (or discover) itself over mDNS."""


def _ip(value: str, what: str) -> str:
    """The canonical text form of an IP address, or ZeroconfError."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError as exc:
        raise ZeroconfError(f"{what} {value!r} is not an IP address") from exc


def _adapter_ips(adapters: Iterable[ifaddr.Adapter]) -> list[str]:
    found: list[str] = []
    for adapter in adapters:
        for ip in adapter.ips:
            # ifaddr gives IPv4 as a string, IPv6 as (address, flowinfo, scope_id)
            raw = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                found.append(str(ipaddress.ip_address(raw)))
            except ValueError:
                logger.debug("ignoring unparsable address %r on %s", raw, adapter.name)
    return found


def usable_addresses(adapters: Iterable[ifaddr.Adapter], interfaces: Sequence[str] | None) -> list[str]:
    """The addresses to advertise, given the host's adapters (``ifaddr.get_adapters()``).

    With configured interfaces (IP addresses): those that the host still has,
    in configured order. With ``None`` (all interfaces): every IPv4 address
    that a terminal on the LAN could reach, so neither loopback nor link-local.
    """
    present = _adapter_ips(adapters)
    if interfaces is not None:
        have = set(present)
        wanted = [_ip(i, "interface") for i in interfaces]
        return list(dict.fromkeys(i for i in wanted if i in have))
    usable: list[str] = []
    for text in present:
        address = ipaddress.ip_address(text)
        if address.version == 4 and not (address.is_loopback or address.is_link_local):
            usable.append(text)
    return list(dict.fromkeys(usable))


def ip_version_for(interfaces: Sequence[str] | None) -> IPVersion:
    """The IP versions to run mDNS on: IPv4 for all interfaces, else what the list holds."""
    if interfaces is None:
        return IPVersion.V4Only
    versions = {ipaddress.ip_address(i).version for i in interfaces}
    if versions == {6}:
        return IPVersion.V6Only
    return IPVersion.All if versions == {4, 6} else IPVersion.V4Only


def _instance_name(base: str) -> str:
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in base) or "." in base or not base.strip():
        raise ZeroconfError(f"service name {base!r} must be non-empty text without dots or control characters")
    # Truncating on a character boundary keeps the name valid UTF-8.
    while len(base.encode()) > MAX_INSTANCE_BYTES:
        base = base[:-1]
    return base.strip()


def _txt_value(name: str, value: str) -> str:
    if not value or len(value.encode()) > MAX_TXT_VALUE_BYTES or any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ZeroconfError(f"{name} must be 1-{MAX_TXT_VALUE_BYTES} bytes of printable text")
    return value


class EdgeAdvertiser:
    """Registers, updates and withdraws the edge's DNS-SD service.

    ``interfaces`` are the IP addresses to run mDNS on (``None``: all). The
    advertised ``addresses`` default to the current addresses of those
    interfaces and then follow them (:meth:`check_addresses`); addresses given
    explicitly stay as given.
    """

    def __init__(
        self,
        *,
        store_id: str,
        port: int,
        fingerprint: str,
        interfaces: Sequence[str] | None = None,
        addresses: Sequence[str] | None = None,
        name: str | None = None,
        server: str | None = None,
        adapters: AdapterSource = ifaddr.get_adapters,
    ) -> None:
        try:
            check_slug("store_id", store_id)
        except ProtocolError as exc:
            raise ZeroconfError(exc.message) from exc
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ZeroconfError(f"port must be 1-65535, not {port!r}")
        self._store_id = store_id
        self._port = port
        self._properties = {
            "api": API_VERSION,
            "store": store_id,
            "fp": _txt_value("fingerprint", fingerprint),
            "path": API_PATH,
        }
        self._interfaces = None if interfaces is None else [_ip(i, "interface") for i in interfaces]
        self._fixed = None if addresses is None else [_ip(a, "address") for a in addresses]
        self._base_name = _instance_name(name if name is not None else f"Loyalty Edge {store_id}")
        # One host name per advertiser: two edges of a store must never share
        # the A records that terminals resolve the SRV target to.
        self._server = server or f"loyalty-edge-{store_id[:40]}-{secrets.token_hex(3)}.local."
        self._adapters = adapters
        self._lock = asyncio.Lock()
        self._zc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        self._addresses: list[str] = []
        self._warned_no_address = False
        self._repeat_goodbye: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ state

    @property
    def advertised(self) -> bool:
        return self._info is not None

    @property
    def name(self) -> str:
        """The instance name in use: zeroconf may have renamed it on a conflict."""
        if self._info is None:
            return self._base_name
        return self._info.name[: -len(SERVICE_TYPE) - 1]

    @property
    def addresses(self) -> list[str]:
        return list(self._addresses)

    @property
    def port(self) -> int:
        return self._port

    def status(self) -> dict[str, Any]:
        return {
            "advertised": self.advertised,
            "name": self.name,
            "addresses": self.addresses,
            "port": self._port,
        }

    # -------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Open mDNS on the interfaces and advertise (if there is an address yet)."""
        async with self._lock:
            if self._zc is not None:
                raise ZeroconfError("advertiser already started")
            interfaces: list[str] | InterfaceChoice = (
                InterfaceChoice.All if self._interfaces is None else list(self._interfaces)
            )
            try:
                self._zc = AsyncZeroconf(interfaces=interfaces, ip_version=ip_version_for(self._interfaces))
            except (ZeroconfLibraryError, OSError) as exc:
                raise ZeroconfError(f"cannot open mDNS on {self._interfaces or 'all interfaces'}: {exc}") from exc
            try:
                addresses = self._fixed if self._fixed is not None else self._current()
                await self._apply(addresses)
            except BaseException:
                # the registration error is the one worth reporting
                with contextlib.suppress(ZeroconfError):
                    await self._close_zeroconf()
                raise

    async def refresh_addresses(self, addresses: Sequence[str]) -> bool:
        """Advertise these addresses instead; True if anything changed.

        An empty list withdraws the advertisement until addresses come back.
        """
        wanted = [_ip(a, "address") for a in addresses]
        async with self._lock:
            if self._zc is None:
                raise ZeroconfError("advertiser not started")
            return await self._apply(wanted)

    async def check_addresses(self) -> bool:
        """Follow the interfaces' current addresses; True if the advertisement changed."""
        if self._fixed is not None:
            return False
        async with self._lock:
            if self._zc is None:
                raise ZeroconfError("advertiser not started")
            current = self._current()
            if self._interfaces is None and set(current) != set(self._addresses):
                # New addresses may sit on interfaces that mDNS has no socket on yet.
                try:
                    await self._zc.async_update_interfaces()
                except (ZeroconfLibraryError, OSError) as exc:
                    raise ZeroconfError(f"cannot follow interface changes: {exc}") from exc
            return await self._apply(current)

    async def stop(self) -> None:
        """Withdraw the advertisement (goodbye packets) and close mDNS; idempotent."""
        async with self._lock:
            if self._zc is None:
                return
            try:
                await self._unregister()
            finally:
                await self._close_zeroconf()

    # ---------------------------------------------------------- helpers

    def _current(self) -> list[str]:
        try:
            adapters = list(self._adapters())
        except OSError as exc:
            raise ZeroconfError(f"cannot list network interfaces: {exc}") from exc
        current = usable_addresses(adapters, self._interfaces)
        if not current and not self._warned_no_address:
            logger.warning("no usable address on %s: not advertising", self._interfaces or "any interface")
        self._warned_no_address = not current
        return current

    async def _apply(self, addresses: list[str]) -> bool:
        """Make the advertisement match ``addresses``; caller holds the lock."""
        unique = list(dict.fromkeys(addresses))
        if self._info is not None and set(unique) == set(self._addresses):
            return False
        if self._info is None and not unique:
            return False
        if not unique:
            await self._unregister()
            return True
        if self._info is None:
            await self._register(unique)
            return True
        logger.info("mDNS: %s now at %s (was %s)", self.name, unique, self._addresses)
        info = self._info
        assert self._zc is not None
        previous = info.parsed_addresses()
        # Cache-flush only expires records older than a second (RFC 6762
        # 10.2): a terminal that resolved us just before the change would keep
        # the old address for the whole TTL without an explicit goodbye.
        stale = [r for r in info.dns_addresses(override_ttl=0) if str(ipaddress.ip_address(r.address)) not in unique]
        info.addresses = [ipaddress.ip_address(a).packed for a in unique]
        try:
            if stale:
                self._send_goodbye(stale)
            await (await self._zc.async_update_service(info))
        except (ZeroconfLibraryError, OSError) as exc:
            info.addresses = [ipaddress.ip_address(a).packed for a in previous]
            raise ZeroconfError(f"cannot update the advertisement of {self.name}: {exc}") from exc
        self._addresses = unique
        if stale:
            self._cancel_repeat_goodbye()
            self._repeat_goodbye = asyncio.get_running_loop().create_task(self._goodbye_again(stale))
        return True

    def _send_goodbye(self, records: list[Any]) -> None:
        assert self._zc is not None
        goodbye = DNSOutgoing(_RESPONSE_FLAGS)
        for record in records:
            goodbye.add_answer_at_time(record, 0)
        self._zc.zeroconf.async_send(goodbye)

    async def _goodbye_again(self, stale: list[Any]) -> None:
        await asyncio.sleep(_REPEAT_GOODBYE_S)
        async with self._lock:
            if self._zc is None or self._info is None:
                return
            gone = [r for r in stale if str(ipaddress.ip_address(r.address)) not in self._addresses]
            if not gone:
                return
            try:
                self._send_goodbye(gone)
            except (ZeroconfLibraryError, OSError) as exc:
                logger.warning("mDNS: cannot repeat the goodbye for %s: %s", self.name, exc)

    def _cancel_repeat_goodbye(self) -> None:
        task, self._repeat_goodbye = self._repeat_goodbye, None
        if task is not None:
            task.cancel()

    async def _register(self, addresses: list[str]) -> None:
        assert self._zc is not None
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{self._base_name}.{SERVICE_TYPE}",
            port=self._port,
            properties=dict(self._properties),
            server=self._server,
            addresses=[ipaddress.ip_address(a).packed for a in addresses],
        )
        try:
            # Probing renames to "<name>-2", "-3", ... while another edge holds the name.
            announced = await self._zc.async_register_service(info, allow_name_change=True)
            await announced
        except (ZeroconfLibraryError, OSError) as exc:
            raise ZeroconfError(f"cannot advertise {self._base_name!r}: {exc}") from exc
        self._info = info
        self._addresses = addresses
        if self.name != self._base_name:
            logger.warning("mDNS name %r is taken on this network: advertising as %r", self._base_name, self.name)
        logger.info("mDNS: advertising %r at %s port %d", self.name, addresses, self._port)

    async def _unregister(self) -> None:
        info, self._info = self._info, None
        self._addresses = []
        if info is None or self._zc is None:
            return
        try:
            await (await self._zc.async_unregister_service(info))
        except (ZeroconfLibraryError, OSError) as exc:
            raise ZeroconfError(f"cannot withdraw {info.name!r}: {exc}") from exc
        logger.info("mDNS: withdrew %r", info.name)

    async def _close_zeroconf(self) -> None:
        self._cancel_repeat_goodbye()
        zc, self._zc = self._zc, None
        self._info = None
        self._addresses = []
        if zc is None:
            return
        try:
            await zc.async_close()
        except (ZeroconfLibraryError, OSError) as exc:
            raise ZeroconfError(f"cannot close mDNS: {exc}") from exc
