"""The hub's Prometheus metrics (``docs/operations.md`` lists them).

Counters and histograms are updated once per request, when its history row is complete, and
once per accepted heartbeat: never per chunk of a stream. The per-request ones are plain
numbers (:class:`RequestCounts`), turned into Prometheus families only when someone scrapes:
prometheus-client's own counters and histograms take a lock per update and walk a histogram's
buckets in Python. Gauges of state the hub keeps anyway (requests in flight, providers online,
history backlog, store failures) are read at scrape time too, by :class:`_StateCollector`.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from inferclub.hub.background import StoreFailures
from inferclub.hub.store import RequestRecord

if TYPE_CHECKING:
    from inferclub.hub.app import Hub

#: A bucket bound as Prometheus writes it in ``le`` (``0.005``, ``1.0``, ``+Inf``).
_le: Callable[[float], str] = floatToGoString

#: Seconds: from a fast cached answer to a cold model load.
TTFB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
#: Seconds: a healthy stream has no total limit, so the top buckets are long.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class Buckets:
    """One histogram's counts: a value goes to the first bucket whose bound is at least it
    (Prometheus's ``le``), or past the last bound (``+Inf``)."""

    __slots__ = ("bounds", "counts", "sum", "_labels")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self._labels = [_le(bound) for bound in (*self.bounds, float("inf"))]

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, count)`` pairs as a histogram family takes them, ``+Inf`` last."""
        out, total = [], 0
        for le, count in zip(self._labels, self.counts, strict=True):
            total += count
            out.append((le, float(total)))
        return out


class RequestCounts(Collector):
    """Finished requests by type, status and provider, and their time to first byte and
    duration by type: plain numbers, one dict update and two bisects per request."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int, str], int] = {}
        self.ttfb: dict[str, Buckets] = {}
        self.duration: dict[str, Buckets] = {}

    def request_done(self, row: RequestRecord, provider: str) -> None:
        kind = row.type or "unknown"
        labels = (kind, row.status or 0, provider)
        self.requests[labels] = self.requests.get(labels, 0) + 1
        if row.ttfb_ms is not None:
            ttfb = self.ttfb.get(kind)
            if ttfb is None:
                ttfb = self.ttfb[kind] = Buckets(TTFB_BUCKETS)
            ttfb.observe(row.ttfb_ms / 1000)
        if row.duration_ms is not None:
            took = self.duration.get(kind)
            if took is None:
                took = self.duration[kind] = Buckets(DURATION_BUCKETS)
            took.observe(row.duration_ms / 1000)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "inferclub_requests",
            "Proxied inference requests, by service type, final status and provider.",
            labels=["type", "status", "provider"],
        )
        for (kind, status, provider), n in self.requests.items():
            requests.add_metric([kind, str(status), provider], n)
        yield requests
        for name, doc, by_type in (
            (
                "inferclub_request_ttfb_seconds",
                "Seconds from a request's arrival to the agent's response headers.",
                self.ttfb,
            ),
            (
                "inferclub_request_duration_seconds",
                "Seconds from a request's arrival to its end (the last byte of a stream).",
                self.duration,
            ),
        ):
            family = HistogramMetricFamily(name, doc, labels=["type"])
            for kind, buckets in by_type.items():
                family.add_metric([kind], buckets.cumulative(), buckets.sum)
            yield family


class HubMetrics:
    """One hub's metrics, in a registry of its own."""

    def __init__(self, hub: Hub) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.counts = RequestCounts()
        r.register(self.counts)
        #: Count one finished request (its history row is complete).
        self.request_done = self.counts.request_done
        self.heartbeats = Counter(
            "inferclub_heartbeats", "Heartbeats accepted from agents.", registry=r
        )
        r.register(_StateCollector(hub))
        # The usual process_* series (CPU, memory, open files), from /proc where there is one.
        ProcessCollector(registry=r)


class _StateCollector(Collector):
    """Gauges and totals the hub already keeps, read at scrape time."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        yield _gauge(
            "inferclub_requests_in_flight",
            "Inference requests in the hub now (proxied, or waiting for a slot or place).",
            hub.inflight,
        )
        now = time.time()
        online = sum(1 for p in hub.registry.all_providers() if hub.registry.is_online(p, now))
        yield _gauge("inferclub_providers_online", "Providers whose heartbeat is recent.", online)
        yield _gauge(
            "inferclub_tunnels_connected",
            "Agents' tunnels this hub process holds now.",
            len(hub.relay.tunnels),
        )
        yield _counter(
            "inferclub_requests_paced",
            "Inference requests that waited for their slot under the user's request rate.",
            hub.request_rate.paced,
        )
        yield _gauge(
            "inferclub_history_backlog_rows",
            "Request-history rows waiting to be written to the store.",
            hub.history.pending,
        )
        yield _counter(
            "inferclub_history_dropped_rows",
            "Request-history rows dropped (refused by the store, or past the buffer).",
            hub.history.dropped,
        )
        errors = CounterMetricFamily(
            "inferclub_store_errors",
            "Failed background writes to the store, by what was written.",
            labels=["what"],
        )
        for failures in _store_failures(hub):
            errors.add_metric([failures.what], failures.total)
        yield errors


def _store_failures(hub: Hub) -> list[StoreFailures]:
    return [
        hub.history.failures,
        hub.retention.failures,
        hub.keys.last_used_failures,
        hub.liveness.description_failures,
        hub.liveness.last_seen_failures,
    ]


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)
