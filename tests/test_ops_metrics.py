"""/metrics in the Prometheus text format, parsed with prometheus-client's own parser.

The edge is the real ``loyalty-edge serve`` process syncing to the real
``loyalty-cloud serve`` process; the cloud's conflict and replay counters are
driven through its HTTP API in-process.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from cloud.metrics import CloudMetrics
from cloud.model import StoreSync

from . import cloudkit as k
from .processkit import CloudProcess, EdgeProcess, free_port

PHONE = "+33612345678"
NAME = "Zoé Quintard"


def scrape(url: str) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return text, samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


async def test_edge_and_cloud_metrics_follow_real_traffic(tmp_path: Path) -> None:
    cloud = CloudProcess(tmp_path)
    cloud.service.start()
    edge = EdgeProcess(tmp_path, cloud, "store-m")
    metrics_port = free_port()
    edge.service.env = {"LOYALTY_EDGE_METRICS_PORT": str(metrics_port)}
    edge.service.start()
    edge_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{edge.url}/v1/pair", json={"code": edge.pairing_code(), "name": "Till"}) as r:
                token = (await r.json())["token"]
            auth = {"Authorization": f"Bearer {token}"}
            wait_for(lambda: bool(edge.query("SELECT 1 FROM meta WHERE key = 'program'")))
            async with session.post(f"{edge.url}/v1/customers", headers={**auth, "Idempotency-Key": "e1"},
                                    json={"name": NAME, "phone": PHONE, "consent": {"terms_accepted": True}}) as r:
                assert r.status == 201, await r.text()
                customer_id = (await r.json())["customer_id"]
            async with session.get(f"{edge.url}/v1/customers", params={"phone": PHONE}, headers=auth) as r:
                assert r.status == 200
            async with session.get(f"{edge.url}/v1/customers/{customer_id}", headers=auth) as r:
                assert r.status == 200
            async with session.get(f"{edge.url}/v1/customers", params={"phone": PHONE}) as r:
                assert r.status == 401
            async with session.post(f"{edge.url}/v1/earns", headers={**auth, "Idempotency-Key": "e2"},
                                    json={"customer_id": customer_id, "sale_id": "s1", "amount": 1250,
                                          "state": "paid"}) as r:
                assert r.status == 201, await r.text()
        wait_for(lambda: edge.query("SELECT COUNT(*) FROM outbox WHERE status IS NULL")[0][0] == 0)

        text, s = scrape(edge_metrics)
        assert value(s, "loyalty_edge_http_requests_total", route="/v1/customers", method="GET", status="200") == 1
        assert value(s, "loyalty_edge_http_requests_total", route="/v1/customers", method="GET", status="401") == 1
        assert value(s, "loyalty_edge_http_requests_total", route="/v1/customers/{customer_id}", method="GET",
                     status="200") == 1
        assert value(s, "loyalty_edge_http_request_duration_seconds_count", route="/v1/earns") == 1
        assert value(s, "loyalty_edge_http_request_duration_seconds_sum", route="/v1/earns") > 0
        # Every durable write went through a group commit: enroll, earn, pairing, batch, ack, downlink.
        assert value(s, "loyalty_edge_db_commit_duration_seconds_count") >= 6
        assert value(s, "loyalty_edge_db_commit_group_size_sum") >= 6
        assert value(s, "loyalty_edge_sync_batches_acked_total") >= 1
        assert value(s, "loyalty_edge_sync_ops_total", result="applied") == 2
        assert value(s, "loyalty_edge_outbox_depth") == 0 and value(s, "loyalty_edge_store_up") == 1
        assert value(s, "loyalty_edge_cloud_reachable") == 1
        # No customer data in labels or anywhere else: routes are templates, never paths or queries.
        for secret in (PHONE, PHONE[3:], customer_id, NAME, "Quintard"):
            assert secret not in text

        _, c = scrape(f"{cloud.url}/metrics")
        assert value(c, "loyalty_cloud_batches_received_total", store="store-m", kind="new") >= 1
        assert value(c, "loyalty_cloud_ops_total", store="store-m", result="applied") == 2
        assert value(c, "loyalty_cloud_batch_apply_duration_seconds_count") >= 1
        assert value(c, "loyalty_cloud_pulls_total", store="store-m") >= 1
        assert value(c, "loyalty_cloud_stores") == 1
        assert value(c, "loyalty_cloud_stores_silent", hours="24") == 0
        assert value(c, "loyalty_cloud_store_last_heard_timestamp_seconds", store="store-m") > time.time() - 60

        # The cloud goes away: writes queue, the outbox grows and ages, sync errors are counted.
        assert cloud.service.stop() == 0
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{edge.url}/v1/earns", headers={**auth, "Idempotency-Key": "e3"},
                                    json={"customer_id": customer_id, "sale_id": "s2", "amount": 300,
                                          "state": "paid"}) as r:
                assert r.status == 201
        wait_for(lambda: value(scrape(edge_metrics)[1], "loyalty_edge_sync_errors_total",
                               error="CloudUnavailable") >= 1)
        _, s = scrape(edge_metrics)
        assert value(s, "loyalty_edge_outbox_depth") == 1
        assert value(s, "loyalty_edge_outbox_oldest_age_seconds") > 0
        assert value(s, "loyalty_edge_cloud_reachable") == 0
    finally:
        edge.service.ensure_stopped()
        cloud.service.ensure_stopped()


async def test_cloud_counts_conflicts_replays_errors_and_silent_stores(tmp_path: Path) -> None:
    async with k.running_cloud(tmp_path) as cloud:
        store = cloud.stores["store-a"]
        cid = k.any_uuid()
        sent, batch_hash = store.batch([k.enroll(cid), k.earn(cid, "s1", 50), k.redeem(cid, "s2", 51)])
        for _ in range(2):  # the second answers the stored ack
            status, _ = await cloud.post("/v1/batches", sent)
            assert status == 200
        store.advance(batch_hash)
        gap, _ = store.batch([k.earn(cid, "s3", 5)], seq=9)
        status, _ = await cloud.post("/v1/batches", gap)
        assert status == 409
        resp = await cloud.client.get("/metrics")
        assert resp.status == 200
        samples = {(x.name, tuple(sorted(x.labels.items()))): x.value
                   for f in text_string_to_metric_families(await resp.text()) for x in f.samples}
        assert value(samples, "loyalty_cloud_conflicts_total", store="store-a") == 1
        assert value(samples, "loyalty_cloud_ops_total", store="store-a", result="refused") == 1
        assert value(samples, "loyalty_cloud_ops_total", store="store-a", result="applied") == 2
        assert value(samples, "loyalty_cloud_batches_received_total", store="store-a", kind="new") == 1
        assert value(samples, "loyalty_cloud_batches_received_total", store="store-a", kind="replayed") == 1
        assert value(samples, "loyalty_cloud_batch_errors_total", code="sequence_gap") == 1
        assert value(samples, "loyalty_cloud_stores") == 3
        # Just registered: nobody is silent yet, whoever has not spoken.
        assert value(samples, "loyalty_cloud_stores_silent", hours="24") == 0


def test_silent_stores_count_from_their_last_contact_or_registration() -> None:
    hour = 3_600_000
    metrics = CloudMetrics(silent_hours=2)
    t0 = 1_000_000_000
    stores = [
        StoreSync("a", "acme", t0, 0, 0, last_batch_at=t0 + 3 * hour, last_pull_at=None),  # a batch 1 ms ago
        StoreSync("b", "acme", t0, 0, 0, last_batch_at=None, last_pull_at=t0 + hour),  # pulled 2 h ago
        StoreSync("c", "acme", t0 + 2 * hour, 0, 0, last_batch_at=None, last_pull_at=None),  # new, never heard
        StoreSync("d", "acme", t0, 0, 0, last_batch_at=None, last_pull_at=None),  # registered 3 h ago, never heard
    ]
    metrics.update_stores(stores, t0 + 3 * hour + 1, inbox=4)
    assert metrics.registry.get_sample_value("loyalty_cloud_stores_silent", {"hours": "2"}) == 2  # b and d
    assert metrics.registry.get_sample_value("loyalty_cloud_inbox_batches") == 4
    assert metrics.registry.get_sample_value("loyalty_cloud_store_last_heard_timestamp_seconds",
                                             {"store": "b"}) == (t0 + hour) / 1000
    metrics.update_stores(stores, t0 + 5 * hour + 2, inbox=0)
    assert metrics.registry.get_sample_value("loyalty_cloud_stores_silent", {"hours": "2"}) == 4
