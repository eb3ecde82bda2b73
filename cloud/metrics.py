"""Prometheus metrics of the cloud, through ``prometheus-client``.

Measured around the sync service and the reconciler rather than inside them:
the service reports batches it answered without applying them (a resend
answered with its stored ack, a 202), the embedded reconciler reports every
batch it applied with its outcome and duration. When each store was last
heard from (batch or pull) is kept in the ledger (``store_sync``), so
"stores not heard from in N hours" is computed at scrape time from there and
is the same in every process and across restarts; a store never heard from
counts from its registration.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from protocol import MessageType, OpStatus
from protocol.envelope import open_envelope

from .api import CLOCK, STORAGE
from .errors import HttpError
from .handoff import Handoff
from .keys import CloudKey
from .model import StoreSync
from .reconciler import INSUFFICIENT_BALANCE
from .service import ACK_WAIT, SyncService
from .storage import Storage
from .worker import Applied

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SILENT_HOURS = 24.0


class CloudMetrics:
    def __init__(self, *, silent_hours: float = SILENT_HOURS) -> None:
        self.registry = CollectorRegistry()
        self.silent_hours = silent_hours
        r = self.registry
        self.batches = Counter("loyalty_cloud_batches_received", "Batches answered with an ack, by store; "
                               "new = applied by this process's reconciler, replayed = a resend answered with "
                               "the stored ack", ["store", "kind"], registry=r)
        self.pending = Counter("loyalty_cloud_batches_pending", "Batch POSTs answered 202: stored, not applied "
                               "within the wait (the edge sends them again)", ["store"], registry=r)
        self.batch_errors = Counter("loyalty_cloud_batch_errors", "Batches refused, by error code", ["code"],
                                    registry=r)
        self.apply_latency = Histogram("loyalty_cloud_batch_apply_duration_seconds",
                                       "Time for the reconciler to claim, decide and commit one batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.ops = Counter("loyalty_cloud_ops", "Ops of new batches, by store and result", ["store", "result"],
                           registry=r)
        self.conflicts = Counter("loyalty_cloud_conflicts", "Debits refused over the confirmed balance, by store",
                                 ["store"], registry=r)
        self.pulls = Counter("loyalty_cloud_pulls", "Pulls answered, by store", ["store"], registry=r)
        self.inbox = Gauge("loyalty_cloud_inbox_batches", "Batches received and not applied yet", registry=r)
        self.stores = Gauge("loyalty_cloud_stores", "Stores registered in the ledger", registry=r)
        self.silent = Gauge("loyalty_cloud_stores_silent", "Stores not heard from (batch or pull) in `hours` hours",
                            ["hours"], registry=r)
        self.last_heard_gauge = Gauge("loyalty_cloud_store_last_heard_timestamp_seconds",
                                      "Unix time of a store's last batch or pull", ["store"], registry=r)

    def applied(self, applied: Applied) -> None:
        store = applied.store_id
        results = applied.outcome.results
        refused = [r for r in results if r.status is OpStatus.REFUSED]
        self.apply_latency.observe(applied.seconds)
        self.batches.labels(store, "new").inc()
        self.ops.labels(store, "applied").inc(len(results) - len(refused))
        self.ops.labels(store, "refused").inc(len(refused))
        self.conflicts.labels(store).inc(sum(1 for r in refused if r.code == INSUFFICIENT_BALANCE))

    def update_stores(self, stores: list[StoreSync], now_ms: int, inbox: int) -> None:
        limit_ms = self.silent_hours * 3_600_000
        self.stores.set(len(stores))
        self.silent.labels(f"{self.silent_hours:g}").set(sum(1 for s in stores if now_ms - s.silent_since() > limit_ms))
        self.inbox.set(inbox)
        for store in stores:
            heard = store.last_heard_at
            if heard is not None:
                self.last_heard_gauge.labels(store.store_id).set(heard / 1000)


METRICS = web.AppKey("cloud_metrics", CloudMetrics)


class MeteredSyncService(SyncService):
    """The sync service, counted."""

    def __init__(self, storage: Storage, cloud_key: CloudKey, clock: Callable[[], int], metrics: CloudMetrics,
                 *, handoff: Handoff | None = None, ack_wait: float = ACK_WAIT) -> None:
        super().__init__(storage, cloud_key, clock, handoff=handoff, ack_wait=ack_wait)
        self.metrics = metrics
        self._store_of_key: dict[str, str] = {}

    async def submit_batch(self, data: bytes) -> bytes:
        try:
            return await super().submit_batch(data)
        except HttpError as exc:
            if exc.status >= 400:
                self.metrics.batch_errors.labels(exc.code).inc()
            raise

    def answered(self, store_id: str, how: str) -> None:
        if how == "pending":
            self.metrics.pending.labels(store_id).inc()
        else:
            self.metrics.batches.labels(store_id, how).inc()

    async def pull(self, data: bytes) -> bytes:
        sealed = await super().pull(data)
        key_id = open_envelope(data, MessageType.PULL).key_id
        store = self._store_of_key.get(key_id)
        if store is None:
            record = await self.storage.find_key(key_id)
            if record is not None:
                store = self._store_of_key[key_id] = record.store_id
        if store is not None:
            self.metrics.pulls.labels(store).inc()
        return sealed


async def metrics_handler(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    storage = request.app[STORAGE]
    metrics.update_stores(await storage.list_store_sync(), request.app[CLOCK](), await storage.inbox_depth())
    return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})
