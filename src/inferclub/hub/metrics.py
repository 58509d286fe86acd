"""The hub's Prometheus metrics (``docs/operations.md`` lists them).

Counters and histograms are updated once per request, when its history row is complete, and
once per accepted heartbeat: never per chunk of a stream. Gauges of state the hub keeps anyway
(requests in flight, providers online, history backlog, store failures) are read only when
someone scrapes, by :class:`_StateCollector`.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterator
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

#: Seconds: from a fast cached answer to a cold model load.
TTFB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
#: Seconds: a healthy stream has no total limit, so the top buckets are long.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
TTFB = "inferclub_request_ttfb_seconds"
DURATION = "inferclub_request_duration_seconds"


class HubMetrics:
    """One hub's metrics, in a registry of its own."""

    def __init__(self, hub: Hub) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # Requests are counted in plain Python and rendered at scrape time (_RequestCollector):
        # prometheus-client's Counter and Histogram take a lock and make several calls per
        # update, and the hub updates three of them on every request.
        self._requests = _RequestCollector()
        r.register(self._requests)
        self.heartbeats = Counter(
            "inferclub_heartbeats", "Heartbeats accepted from agents.", registry=r
        )
        r.register(_StateCollector(hub))
        # The usual process_* series (CPU, memory, open files), from /proc where there is one.
        ProcessCollector(registry=r)

    def request_done(self, row: RequestRecord, provider: str) -> None:
        """Count one finished request (its history row is complete)."""
        self._requests.done(row.type or "unknown", row.status or 0, provider, row)


class _Histogram:
    """One label set of a histogram: counts per bucket (not cumulative), sum, creation time."""

    __slots__ = ("bounds", "counts", "sum", "created")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        #: One more than the bounds: the last is +Inf.
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        # Prometheus buckets are "less than or equal": bisect_left finds the first bound >= value.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def add_to(self, family: HistogramMetricFamily, name: str, kind: str) -> None:
        buckets, total = [], 0
        for le, count in zip(_les(self.bounds), self.counts, strict=True):
            total += count
            buckets.append((le, float(total)))
        family.add_metric([kind], buckets, self.sum)
        family.add_sample(name + "_created", {"type": kind}, self.created)


def _les(bounds: tuple[float, ...]) -> list[str]:
    """The ``le`` labels of ``bounds`` and +Inf, written as prometheus-client writes them."""
    return [floatToGoString(b) for b in (*bounds, math.inf)]  # type: ignore[no-untyped-call]


class _RequestCollector(Collector):
    """``inferclub_requests_total`` by type, status and provider, and the time to first byte
    and duration histograms by type, as prometheus-client's Counter and Histogram render them."""

    def __init__(self) -> None:
        #: (type, status, provider) -> [count, created]
        self._counted: dict[tuple[str, int, str], list[float]] = {}
        #: type -> (time to first byte, duration)
        self._timers: dict[str, tuple[_Histogram, _Histogram]] = {}

    def done(self, kind: str, status: int, provider: str, row: RequestRecord) -> None:
        counted = self._counted.get((kind, status, provider))
        if counted is None:
            self._counted[kind, status, provider] = [1, time.time()]
        else:
            counted[0] += 1
        timers = self._timers.get(kind)
        if timers is None:
            timers = self._timers[kind] = (_Histogram(TTFB_BUCKETS), _Histogram(DURATION_BUCKETS))
        if row.ttfb_ms is not None:
            timers[0].observe(row.ttfb_ms / 1000)
        if row.duration_ms is not None:
            timers[1].observe(row.duration_ms / 1000)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "inferclub_requests",
            "Proxied inference requests, by service type, final status and provider.",
            labels=["type", "status", "provider"],
        )
        for (kind, status, provider), (count, created) in list(self._counted.items()):
            requests.add_metric([kind, str(status), provider], count, created=created)
        yield requests
        ttfb = HistogramMetricFamily(
            TTFB,
            "Seconds from a request's arrival to the agent's response headers.",
            labels=["type"],
        )
        duration = HistogramMetricFamily(
            DURATION,
            "Seconds from a request's arrival to its end (the last byte of a stream).",
            labels=["type"],
        )
        for kind, (first, whole) in list(self._timers.items()):
            first.add_to(ttfb, TTFB, kind)
            whole.add_to(duration, DURATION, kind)
        yield ttfb
        yield duration


class _StateCollector(Collector):
    """Gauges and totals the hub already keeps, read at scrape time."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        yield _gauge(
            "inferclub_requests_in_flight", "Inference requests being proxied now.", hub.inflight
        )
        now = time.time()
        online = sum(1 for p in hub.registry.all_providers() if hub.registry.is_online(p, now))
        yield _gauge("inferclub_providers_online", "Providers whose heartbeat is recent.", online)
        yield _gauge(
            "inferclub_tunnels_connected",
            "Agents' tunnels this hub process holds now.",
            len(hub.relay.tunnels),
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
