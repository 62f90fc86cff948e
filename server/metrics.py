"""Prometheus metrics, named after tusd's, plus the finalize pipeline's.

Finalize outcomes and durations are read from the status records at scrape time, so they are right
whichever process finalized (this one in embedded mode, RQ workers elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from modeldrop.server.store.filestore import FileStore
from modeldrop.server.store.lifecycle import State, UploadStatus

FINALIZE_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)
# a label per method a client makes up would grow /metrics without bound
METHODS = frozenset({"GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS", "PUT"})


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("modeldrop_requests", "HTTP requests", ["method", "status"], registry=r)
        self.bytes_received = Counter("modeldrop_bytes_received", "upload bytes stored", registry=r)
        self.bytes_spliced = Counter("modeldrop_bytes_spliced", "of those, bytes of bodies taken off the socket "
                                     "and spliced into the file", registry=r)
        self.bytes_direct = Counter("modeldrop_bytes_direct", "of those taken off the socket, bytes written with "
                                    "O_DIRECT instead of spliced through the page cache", registry=r)
        self.uploads_created = Counter("modeldrop_uploads_created", "uploads created", registry=r)
        self.uploads_finished = Counter("modeldrop_uploads_finished", "uploads whose last byte arrived", registry=r)
        self.uploads_terminated = Counter("modeldrop_uploads_terminated", "uploads terminated by clients", registry=r)
        self.active_requests = Gauge("modeldrop_active_body_requests", "PATCH/POST bodies being received",
                                     registry=r)
        self.lock_waits = Counter("modeldrop_lock_waits", "requests that had to wait for an upload's lock",
                                  registry=r)
        self.lock_releases = Gauge("modeldrop_lock_release_requests", "release requests sent to lock holders",
                                   registry=r)

    def watch_store(self, store: FileStore, queue_depth: Callable[[], int]) -> None:
        self.registry.register(_StoreCollector(store, queue_depth))


class _StoreCollector(Collector):
    def __init__(self, store: FileStore, queue_depth: Callable[[], int]) -> None:
        self.store = store
        self.queue_depth = queue_depth

    def collect(self) -> Iterator[GaugeMetricFamily | HistogramMetricFamily]:
        states = {state: 0 for state in State}
        durations: dict[State, list[float]] = {State.INSTALLED: [], State.FAILED: []}
        for upload_id in self.store.list_ids():
            status = self.store.read_status(upload_id) or UploadStatus()
            states[status.state] += 1
            if status.state in durations and status.duration is not None:
                durations[status.state].append(status.duration)
        by_state = GaugeMetricFamily("modeldrop_uploads", "uploads known to the store, by state", labels=["state"])
        for state, count in states.items():
            by_state.add_metric([state.value], count)
        yield by_state
        depth = GaugeMetricFamily("modeldrop_finalize_queue_depth", "uploads waiting for the finalizer")
        try:
            depth.add_metric([], self.queue_depth())
        except Exception:
            depth.add_metric([], float("nan"))
        yield depth
        histogram = HistogramMetricFamily("modeldrop_finalize_seconds", "finalize durations of retained uploads",
                                          labels=["outcome"])
        for outcome, values in durations.items():
            buckets = [(str(bound), sum(1 for v in values if v <= bound)) for bound in FINALIZE_BUCKETS]
            buckets.append(("+Inf", len(values)))
            histogram.add_metric([outcome.value], buckets, sum(values))
        yield histogram
