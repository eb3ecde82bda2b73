"""Prometheus metrics of the edge, through ``prometheus-client``.

Kept off the hot path: request counts and latency are recorded by aiohttp's
access-log hook (called once a response is sent, with the elapsed time
already measured), the writer reports each group commit from its own
thread, and everything the store or the sync task already knows (outbox,
conflicts, sync counters) is read only when Prometheus scrapes.

Labels never carry customer data: a route is its template
(``/v1/customers/{customer_id}``), never the path or the query.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .appkeys import CLOCK, STORE, SYNC
from .errors import StoreError

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class EdgeMetrics:
    """The metrics one edge application records; one registry per application."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "loyalty_edge_http_requests", "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "loyalty_edge_http_request_duration_seconds", "Time to answer an HTTP request, by route template",
            ["route"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.commit_latency = Histogram(
            "loyalty_edge_db_commit_duration_seconds", "Time of one group commit (BEGIN IMMEDIATE to COMMIT)",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.group_size = Histogram(
            "loyalty_edge_db_commit_group_size", "Writes sharing one group commit",
            buckets=GROUP_BUCKETS, registry=self.registry,
        )
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe_commit(self, group: int, seconds: float) -> None:
        """Called by the writer thread after each successful commit."""
        self.commit_latency.observe(seconds)
        self.group_size.observe(group)

    def observe_request(self, request: BaseRequest, response: StreamResponse, seconds: float) -> None:
        route = "unmatched"
        match_info = getattr(request, "match_info", None)
        resource = None if match_info is None else match_info.route.resource
        if resource is not None:
            route = resource.canonical
        method = request.method if request.method in METHODS else "other"  # bounded label values
        key = (route, method, response.status)
        children = self._children.get(key)
        if children is None:  # labels() hashes and locks: look each child up once
            children = self._children[key] = (
                self.requests.labels(route, method, str(response.status)), self.latency.labels(route))
        children[0].inc()
        children[1].observe(seconds)


METRICS = web.AppKey("metrics", EdgeMetrics)


class MetricsAccessLogger(AbstractAccessLogger):
    """aiohttp's access-log hook, used for metrics only: nothing is logged
    (a log line would carry phone numbers and emails from query strings)."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        metrics = request.app.get(METRICS) if isinstance(request, web.Request) else None
        if metrics is not None:
            metrics.observe_request(request, response, time)


class ScrapeCollector(Collector):
    """What the node already knows, read at scrape time only."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        app = self.app
        now = app[CLOCK]()
        store = app[STORE]
        up = GaugeMetricFamily("loyalty_edge_store_up", "1 while the local database answers reads")
        try:
            outbox = store.outbox_summary(int(now * 1000))
        except StoreError:
            up.add_metric([], 0)
            yield up
        else:
            up.add_metric([], 1)
            yield up
            yield GaugeMetricFamily("loyalty_edge_outbox_depth", "Ops not yet acknowledged by the cloud",
                                    value=outbox["depth"])
            yield GaugeMetricFamily("loyalty_edge_outbox_oldest_age_seconds",
                                    "Age of the oldest op not yet acknowledged", value=outbox["oldest_age_s"])
            yield GaugeMetricFamily("loyalty_edge_conflicts", "Ops the cloud refused, awaiting attention",
                                    value=outbox["conflicts"])
        stats = store.writer.stats
        yield CounterMetricFamily("loyalty_edge_db_commit_failures", "Group commits the database refused",
                                  value=stats.failures)
        if SYNC not in app:
            return
        status = app[SYNC].status
        yield CounterMetricFamily("loyalty_edge_sync_batches_acked", "Batches acknowledged by the cloud",
                                  value=status.batches_acked)
        ops = CounterMetricFamily("loyalty_edge_sync_ops", "Ops the cloud answered, by result", labels=["result"])
        ops.add_metric(["applied"], status.ops_acked)
        ops.add_metric(["refused"], status.ops_refused)
        yield ops
        errors = CounterMetricFamily("loyalty_edge_sync_errors", "Failed sync rounds, by error", labels=["error"])
        for kind, count in sorted(status.errors.items()):
            errors.add_metric([kind], count)
        yield errors
        yield GaugeMetricFamily("loyalty_edge_cloud_reachable", "1 if the last sync round reached the cloud",
                                value=1 if status.reachable else 0)
        if status.last_success_at is not None:
            yield GaugeMetricFamily("loyalty_edge_sync_last_success_timestamp_seconds",
                                    "Unix time of the last complete sync round", value=status.last_success_at)
        if status.clock_skew_ms is not None:
            yield GaugeMetricFamily("loyalty_edge_clock_skew_seconds", "Cloud clock minus ours at the last ack",
                                    value=status.clock_skew_ms / 1000)


def install(app: web.Application) -> EdgeMetrics:
    metrics = EdgeMetrics()
    metrics.registry.register(ScrapeCollector(app))
    app[METRICS] = metrics
    return metrics


async def metrics_handler(request: web.Request) -> web.Response:
    """The Prometheus text format. Its listener binds ``metrics_host``
    (loopback by default): binding is the access rule, as for a node exporter."""
    data = generate_latest(request.app[METRICS].registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})
