"""Advertisement and discovery with real zeroconf, on loopback only.

Every mDNS socket here is bound to 127.0.0.1 (IPv4 only; one test plays a
second host on 127.0.0.2, which is also ``lo``): nothing is ever multicast on
another interface. Linux delivers multicast on ``lo`` through
IP_MULTICAST_IF=127.0.0.1 with IP_MULTICAST_LOOP, even though ``lo`` has no
MULTICAST flag and there is no multicast route, so no setup is needed.

Names and store ids are unique per test, so other test runs that share this
machine's loopback cannot disturb the results.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import ifaddr
import pytest
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from edge.discovery import DiscoveredEdge, discover_edges, edge_from_info, format_edges
from edge.zeroconf_service import (
    SERVICE_TYPE,
    EdgeAdvertiser,
    ZeroconfError,
    usable_addresses,
)

LOOPBACK = ["127.0.0.1"]
SECOND_HOST = ["127.0.0.2"]  # still lo: nothing leaves the machine
FINGERPRINT = "ed25519:0123456789abcdef"
T = TypeVar("T")


def unique_store() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def advertiser(store_id: str, port: int = 8080, **kwargs: Any) -> EdgeAdvertiser:
    kwargs.setdefault("interfaces", LOOPBACK)
    return EdgeAdvertiser(store_id=store_id, port=port, fingerprint=FINGERPRINT, **kwargs)


async def discover(store_id: str | None, within: float = 5.0) -> list[DiscoveredEdge]:
    # all responders are on this host: half a second without news is plenty
    return await discover_edges(within, interfaces=LOOPBACK, store_id=store_id, settle=0.5)


async def eventually(probe: Callable[[], Awaitable[T]], check: Callable[[T], bool], within: float = 6.0) -> T:
    """Poll ``probe`` until ``check`` holds; bounded in time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = await probe()
        if check(value) or loop.time() >= deadline:
            return value
        await asyncio.sleep(0.1)


class Watcher:
    """A long-lived browser on loopback, as a terminal keeps one."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ServiceStateChange]] = []

    async def __aenter__(self) -> Watcher:
        self.aiozc = AsyncZeroconf(interfaces=LOOPBACK, ip_version=IPVersion.V4Only)
        self.browser = AsyncServiceBrowser(self.aiozc.zeroconf, SERVICE_TYPE, handlers=[self._on_change])
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.browser.async_cancel()
        await self.aiozc.async_close()

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        self.events.append((name, state_change))

    async def resolve(self, instance: str) -> DiscoveredEdge | None:
        info = AsyncServiceInfo(SERVICE_TYPE, f"{instance}.{SERVICE_TYPE}")
        if not await info.async_request(self.aiozc.zeroconf, 1000):
            return None
        return edge_from_info(info)

    def saw(self, instance: str, change: ServiceStateChange) -> bool:
        return (f"{instance}.{SERVICE_TYPE}", change) in self.events

    async def wait_for(self, instance: str, change: ServiceStateChange, within: float = 3.0) -> bool:
        await eventually(lambda: asyncio.sleep(0), lambda _: self.saw(instance, change), within)
        return self.saw(instance, change)


# -------------------------------------------------- addresses (pure part)


def adapter(name: str, *ips: str | tuple[str, int, int]) -> ifaddr.Adapter:
    return ifaddr.Adapter(name, name, [ifaddr.IP(ip, 24 if isinstance(ip, str) else 64, name) for ip in ips])


ADAPTERS = [
    adapter("lo", "127.0.0.1", ("::1", 0, 0)),
    adapter("eth0", "192.168.1.20", ("fe80::1", 0, 2), ("fd00::20", 0, 0)),
    adapter("eth0:1", "10.0.0.5"),
    adapter("wlan0", "169.254.10.1"),
]


@pytest.mark.parametrize(
    ("interfaces", "expected"),
    [
        (None, ["192.168.1.20", "10.0.0.5"]),
        (["127.0.0.1"], ["127.0.0.1"]),
        (["10.0.0.5", "192.168.1.20"], ["10.0.0.5", "192.168.1.20"]),
        (["192.168.1.99"], []),  # configured but gone (DHCP moved us)
        (["192.168.1.20", "192.168.1.20"], ["192.168.1.20"]),
        (["fd00:0::20"], ["fd00::20"]),  # compared in canonical form
        ([], []),
    ],
)
def test_usable_addresses(interfaces: list[str] | None, expected: list[str]) -> None:
    assert usable_addresses(ADAPTERS, interfaces) == expected


def test_usable_addresses_without_lan() -> None:
    assert usable_addresses([adapter("lo", "127.0.0.1"), adapter("wlan0", "169.254.1.1")], None) == []


def test_usable_addresses_of_this_host_include_loopback() -> None:
    assert usable_addresses(ifaddr.get_adapters(), LOOPBACK) == LOOPBACK


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"store_id": "Store 1"}, "store_id"),
        ({"port": 0}, "port"),
        ({"port": True}, "port"),
        ({"port": 70000}, "port"),
        ({"fingerprint": ""}, "fingerprint"),
        ({"fingerprint": "x\n"}, "fingerprint"),
        ({"interfaces": ["eth0"]}, "interface"),
        ({"addresses": ["localhost"]}, "address"),
        ({"name": "edge.one"}, "service name"),
        ({"name": "edge\x00"}, "service name"),
        ({"name": "  "}, "service name"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, Any], message: str) -> None:
    config: dict[str, Any] = {"store_id": "store-1", "port": 8080, "fingerprint": FINGERPRINT, **kwargs}
    with pytest.raises(ZeroconfError, match=message):
        EdgeAdvertiser(**config)


def test_long_names_are_shortened_to_fit_a_dns_label() -> None:
    adv = advertiser("s" * 63)
    assert adv.name.startswith("Loyalty Edge sss")
    assert len(adv.name.encode()) <= 56
    assert len(advertiser("store-1", name="é" * 40).name.encode()) <= 56
    assert adv.status() == {"advertised": False, "name": adv.name, "addresses": [], "port": 8080}


def test_format_edges() -> None:
    edges = [
        DiscoveredEdge("Loyalty Edge store-1", ("192.168.1.20",), 8080, "store-1", "1", FINGERPRINT),
        DiscoveredEdge("Back office", ("fd00::20",), 9000, None, None, None),
    ]
    assert edges[1].url == "http://[fd00::20]:9000"
    lines = format_edges(edges).splitlines()
    assert lines[0].split() == ["NAME", "STORE", "URL", "API", "FINGERPRINT"]
    assert "http://192.168.1.20:8080" in lines[1] and FINGERPRINT in lines[1]
    assert lines[2].split()[-4:] == ["-", "http://[fd00::20]:9000", "-", "-"]
    assert format_edges([]) == "no edges found"


# ------------------------------------------------------------ real mDNS


async def test_advertise_and_discover_round_trips_txt() -> None:
    store = unique_store()
    adv = advertiser(store, port=18080)
    await adv.start()
    try:
        assert adv.status() == {
            "advertised": True,
            "name": f"Loyalty Edge {store}",
            "addresses": ["127.0.0.1"],  # derived from the interface
            "port": 18080,
        }
        edges = await discover(store)
        assert edges == [
            DiscoveredEdge(
                name=f"Loyalty Edge {store}",
                addresses=("127.0.0.1",),
                port=18080,
                store_id=store,
                api="1",
                fingerprint=FINGERPRINT,
            )
        ]
        assert edges[0].url == "http://127.0.0.1:18080"
        # the path travels in TXT too
        async with Watcher() as watcher:
            info = AsyncServiceInfo(SERVICE_TYPE, f"{adv.name}.{SERVICE_TYPE}")
            assert await info.async_request(watcher.aiozc.zeroconf, 3000)
            assert info.decoded_properties == {"api": "1", "store": store, "fp": FINGERPRINT, "path": "/v1"}
    finally:
        await adv.stop()
    assert adv.status()["advertised"] is False


async def test_discover_filters_by_store() -> None:
    store_a, store_b = unique_store(), unique_store()
    adv_a, adv_b = advertiser(store_a, port=18081), advertiser(store_b, port=18082)
    await asyncio.gather(adv_a.start(), adv_b.start())
    try:
        only_a = await discover(store_a)
        assert [(e.store_id, e.port) for e in only_a] == [(store_a, 18081)]
        only_b = await discover(store_b)
        assert [(e.store_id, e.port) for e in only_b] == [(store_b, 18082)]
        everything = await discover(None)
        ours = sorted((e.store_id, e.port) for e in everything if e.store_id in (store_a, store_b))
        assert ours == sorted([(store_a, 18081), (store_b, 18082)])
        assert await discover(unique_store(), within=1.0) == []
    finally:
        await asyncio.gather(adv_a.stop(), adv_b.stop())


async def test_name_conflict_renames_the_second(caplog: pytest.LogCaptureFixture) -> None:
    store = unique_store()
    name = f"Edge {store}"
    first = advertiser(store, port=18083, name=name)
    # A second host, as on a real LAN: probes ask for unicast answers, and
    # with both responders on 127.0.0.1:5353 the kernel hands the answer to
    # one socket of its choosing, often the first responder's own. On its own
    # loopback address the second instance gets the answers meant for it.
    second = advertiser(store, port=18084, name=name, interfaces=SECOND_HOST, addresses=SECOND_HOST)
    await first.start()
    try:
        with caplog.at_level(logging.WARNING, logger="edge.zeroconf_service"):
            await second.start()
        try:
            assert first.name == name
            assert second.name != name and second.name.startswith(name)
            assert second.status()["name"] == second.name
            assert any("is taken" in r.getMessage() for r in caplog.records)
            edges = await discover(store)
            assert sorted((e.name, e.port) for e in edges) == sorted([(name, 18083), (second.name, 18084)])
        finally:
            await second.stop()
    finally:
        await first.stop()


async def test_refresh_addresses_is_seen_by_a_browser() -> None:
    store = unique_store()
    adv = advertiser(store, port=18085, addresses=["127.0.0.1"])
    await adv.start()
    try:
        async with Watcher() as watcher:
            before = await eventually(lambda: watcher.resolve(adv.name), lambda e: e is not None)
            assert before is not None and before.addresses == ("127.0.0.1",)
            assert await adv.refresh_addresses(["127.0.0.1"]) is False  # unchanged: no re-announce
            assert await adv.refresh_addresses(["127.0.0.2"]) is True
            assert adv.status()["addresses"] == ["127.0.0.2"]
            after = await eventually(
                lambda: watcher.resolve(adv.name), lambda e: e is not None and e.addresses == ("127.0.0.2",)
            )
            assert after is not None and after.addresses == ("127.0.0.2",)
            assert watcher.saw(adv.name, ServiceStateChange.Updated)
        fresh = await discover(store)
        assert [e.addresses for e in fresh] == [("127.0.0.2",)]
        # explicit addresses are configuration: the interface check leaves them alone
        assert await adv.check_addresses() is False
        assert adv.addresses == ["127.0.0.2"]
    finally:
        await adv.stop()


async def test_check_addresses_follows_the_interfaces() -> None:
    store = unique_store()
    host: list[ifaddr.Adapter] = [adapter("lo", "127.0.0.1")]
    adv = advertiser(store, port=18086, adapters=lambda: list(host))
    await adv.start()
    try:
        assert adv.addresses == ["127.0.0.1"]
        assert await adv.check_addresses() is False  # nothing changed
        # advertised addresses drifted from the interface: the check puts them back
        await adv.refresh_addresses(["127.0.0.3"])
        assert await adv.check_addresses() is True
        assert adv.addresses == ["127.0.0.1"]
        # the interface lost its address: withdraw rather than advertise a dead one
        host[:] = [adapter("lo", "127.0.0.2")]
        async with Watcher() as watcher:
            assert await watcher.wait_for(adv.name, ServiceStateChange.Added)
            assert await adv.check_addresses() is True
            assert adv.status()["advertised"] is False
            assert await watcher.wait_for(adv.name, ServiceStateChange.Removed)
            # and it comes back
            host[:] = [adapter("lo", "127.0.0.1")]
            assert await adv.check_addresses() is True
            assert adv.status()["advertised"] is True
        assert [e.addresses for e in await discover(store)] == [("127.0.0.1",)]
    finally:
        await adv.stop()


async def test_stop_unregisters() -> None:
    store = unique_store()
    adv = advertiser(store, port=18087)
    await adv.start()
    name = adv.name
    try:
        async with Watcher() as watcher:
            assert await watcher.wait_for(name, ServiceStateChange.Added)
            await adv.stop()
            assert await watcher.wait_for(name, ServiceStateChange.Removed)
        assert await discover(store, within=1.0) == []
        assert adv.status()["advertised"] is False
    finally:
        await adv.stop()  # idempotent


async def test_lifecycle_errors() -> None:
    adv = advertiser(unique_store(), port=18088)
    with pytest.raises(ZeroconfError, match="not started"):
        await adv.refresh_addresses(["127.0.0.1"])
    with pytest.raises(ZeroconfError, match="not started"):
        await adv.check_addresses()
    await adv.start()
    try:
        with pytest.raises(ZeroconfError, match="already started"):
            await adv.start()
        with pytest.raises(ZeroconfError, match="not an IP address"):
            await adv.refresh_addresses(["edge.local"])
        assert adv.addresses == ["127.0.0.1"]
    finally:
        await adv.stop()
    with pytest.raises(ValueError, match="timeout"):
        await discover_edges(0, interfaces=LOOPBACK)
