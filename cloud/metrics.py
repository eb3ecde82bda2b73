"""Prometheus metrics of the cloud, through ``prometheus-client``.

Measured around the sync service rather than inside it: the wrapper times
each batch, reads the store and the per-op results from the ack the service
sealed (our own output, so it is decoded without a signature check), and
notes when each store was last heard from. "Stores not heard from in N
hours" is computed at scrape time from the ledger's store list; a store not
heard from since this process started counts from the start, so a restart
never makes every store look silent at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from protocol import MessageType, OpStatus, ProtocolError, decode_ack
from protocol.envelope import open_envelope

from .api import STORAGE
from .errors import HttpError
from .keys import CloudKey
from .reconciler import INSUFFICIENT_BALANCE
from .service import SyncService
from .storage import Storage

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SILENT_HOURS = 24.0


class CloudMetrics:
    def __init__(self, *, silent_hours: float = SILENT_HOURS, started: float | None = None) -> None:
        self.registry = CollectorRegistry()
        self.silent_hours = silent_hours
        self.started = time.time() if started is None else started
        self.last_heard: dict[str, float] = {}
        r = self.registry
        self.batches = Counter("loyalty_cloud_batches_received", "Batches answered with an ack, by store; "
                               "replayed = a resend answered with the stored ack", ["store", "kind"], registry=r)
        self.batch_errors = Counter("loyalty_cloud_batch_errors", "Batches refused, by error code", ["code"],
                                    registry=r)
        self.apply_latency = Histogram("loyalty_cloud_batch_apply_duration_seconds",
                                       "Time to verify, reconcile and commit one batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.ops = Counter("loyalty_cloud_ops", "Ops of new batches, by store and result", ["store", "result"],
                           registry=r)
        self.conflicts = Counter("loyalty_cloud_conflicts", "Debits refused over the confirmed balance, by store",
                                 ["store"], registry=r)
        self.pulls = Counter("loyalty_cloud_pulls", "Pulls answered, by store", ["store"], registry=r)
        self.stores = Gauge("loyalty_cloud_stores", "Stores registered in the ledger", registry=r)
        self.silent = Gauge("loyalty_cloud_stores_silent", "Stores not heard from (batch or pull) in `hours` hours",
                            ["hours"], registry=r)
        self.last_heard_gauge = Gauge("loyalty_cloud_store_last_heard_timestamp_seconds",
                                      "Unix time of a store's last batch or pull", ["store"], registry=r)

    def heard(self, store_id: str, now: float) -> None:
        self.last_heard[store_id] = now
        self.last_heard_gauge.labels(store_id).set(now)

    def update_stores(self, store_ids: list[str], now: float) -> None:
        limit = self.silent_hours * 3600
        silent = sum(1 for s in store_ids if now - self.last_heard.get(s, self.started) > limit)
        self.stores.set(len(store_ids))
        self.silent.labels(f"{self.silent_hours:g}").set(silent)


METRICS = web.AppKey("cloud_metrics", CloudMetrics)


class MeteredSyncService(SyncService):
    """The sync service, timed and counted."""

    def __init__(self, storage: Storage, cloud_key: CloudKey, clock: Callable[[], int], metrics: CloudMetrics) -> None:
        super().__init__(storage, cloud_key, clock)
        self.metrics = metrics
        self._store_of_key: dict[str, str] = {}

    async def submit_batch(self, data: bytes) -> bytes:
        started_ms = self.clock()
        started = time.perf_counter()
        try:
            sealed = await super().submit_batch(data)
        except HttpError as exc:
            self.metrics.batch_errors.labels(exc.code).inc()
            raise
        self.metrics.apply_latency.observe(time.perf_counter() - started)
        try:
            ack = decode_ack(open_envelope(sealed, MessageType.ACK).body)
        except ProtocolError as exc:  # our own output: a bug, but metrics must not fail the batch
            log.error("cannot read back our own ack: %s", exc)
            return sealed
        store = ack.store_id
        self.metrics.heard(store, time.time())
        if ack.at < started_ms:
            self.metrics.batches.labels(store, "replayed").inc()
            return sealed
        self.metrics.batches.labels(store, "new").inc()
        refused = [r for r in ack.results if r.status is OpStatus.REFUSED]
        self.metrics.ops.labels(store, "applied").inc(len(ack.results) - len(refused))
        self.metrics.ops.labels(store, "refused").inc(len(refused))
        self.metrics.conflicts.labels(store).inc(sum(1 for r in refused if r.code == INSUFFICIENT_BALANCE))
        return sealed

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
            self.metrics.heard(store, time.time())
        return sealed


async def metrics_handler(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    stores = await request.app[STORAGE].list_stores()
    metrics.update_stores([s.store_id for s in stores], time.time())
    return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})
