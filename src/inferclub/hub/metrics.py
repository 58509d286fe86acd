"""The hub's Prometheus metrics (``docs/operations.md`` lists them).

Counters and histograms are updated once per request, when its history row is complete, and
once per accepted heartbeat: never per chunk of a stream. Gauges of state the hub keeps anyway
(requests in flight, providers online, history backlog, store failures) are read only when
someone scrapes, by :class:`_StateCollector`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from inferclub.hub.background import StoreFailures
from inferclub.hub.store import RequestRecord

if TYPE_CHECKING:
    from inferclub.hub.app import Hub

#: Seconds: from a fast cached answer to a cold model load.
TTFB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
#: Seconds: a healthy stream has no total limit, so the top buckets are long.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class HubMetrics:
    """One hub's metrics, in a registry of its own."""

    def __init__(self, hub: Hub) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "inferclub_requests",
            "Proxied inference requests, by service type, final status and provider.",
            ["type", "status", "provider"],
            registry=r,
        )
        self.ttfb = Histogram(
            "inferclub_request_ttfb_seconds",
            "Seconds from a request's arrival to the agent's response headers.",
            ["type"],
            buckets=TTFB_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "inferclub_request_duration_seconds",
            "Seconds from a request's arrival to its end (the last byte of a stream).",
            ["type"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.heartbeats = Counter(
            "inferclub_heartbeats", "Heartbeats accepted from agents.", registry=r
        )
        # The labelled children, looked up once: ``labels()`` checks and converts its
        # arguments and takes a lock on every call. Never removed, as prometheus-client keeps
        # every child it made anyway.
        self._counted: dict[tuple[str, int, str], Counter] = {}
        self._timers: dict[str, tuple[Histogram, Histogram]] = {}
        r.register(_StateCollector(hub))
        # The usual process_* series (CPU, memory, open files), from /proc where there is one.
        ProcessCollector(registry=r)

    def request_done(self, row: RequestRecord, provider: str) -> None:
        """Count one finished request (its history row is complete)."""
        kind = row.type or "unknown"
        status = row.status or 0
        counter = self._counted.get((kind, status, provider))
        if counter is None:
            counter = self.requests.labels(kind, str(status), provider)
            self._counted[kind, status, provider] = counter
        counter.inc()
        timers = self._timers.get(kind)
        if timers is None:
            timers = self._timers[kind] = (self.ttfb.labels(kind), self.duration.labels(kind))
        if row.ttfb_ms is not None:
            timers[0].observe(row.ttfb_ms / 1000)
        if row.duration_ms is not None:
            timers[1].observe(row.duration_ms / 1000)


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
