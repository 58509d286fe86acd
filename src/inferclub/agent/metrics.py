"""The agent's Prometheus metrics (``docs/agent.md`` lists them).

Engine latency is observed once per request, when the engine's answer has been relayed; the
services' requests in flight and health are read from the :class:`ServiceTable` only when
someone scrapes.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from inferclub.agent.services import ServiceTable

#: Seconds, from a one-token answer to a long generation.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600)


class AgentMetrics:
    """One agent's metrics, in a registry of its own."""

    def __init__(self, table: ServiceTable) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "inferclub_agent_engine_request_seconds",
            "Seconds an engine took to answer a request completely, by service.",
            ["service"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "inferclub_agent_requests",
            "Requests from the hub forwarded to an engine, by service and outcome.",
            ["service", "outcome"],
            registry=self.registry,
        )
        self.tunnel_connected = Gauge(
            "inferclub_agent_tunnel_connected",
            "1 while the agent's tunnel to the hub is up (run --tunnel), else 0.",
            registry=self.registry,
        )
        self.tunnel_bytes = Counter(
            "inferclub_agent_tunnel_sent_bytes",
            "Answer bytes sent to the hub through the tunnel.",
            registry=self.registry,
        )
        self.tunnel_window_peak = Gauge(
            "inferclub_agent_tunnel_unacked_peak_bytes",
            "The most answer bytes one stream ever had sent and not yet acknowledged by the "
            "hub: bounded by the tunnel's window, however slowly a client reads.",
            registry=self.registry,
        )
        self._peak = 0
        self.registry.register(_TableCollector(table))
        # The usual process_* series (CPU, memory, open files), from /proc where there is one.
        ProcessCollector(registry=self.registry)

    def tunnel_sent(self, size: int, stream_peak: int) -> None:
        self.tunnel_bytes.inc(size)
        if stream_peak > self._peak:
            self._peak = stream_peak
            self.tunnel_window_peak.set(stream_peak)

    def request_done(self, service: str, seconds: float, outcome: str) -> None:
        self.latency.labels(service).observe(seconds)
        self.requests.labels(service, outcome).inc()


class _TableCollector(Collector):
    def __init__(self, table: ServiceTable) -> None:
        self.table = table

    def collect(self) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            "inferclub_agent_requests_in_flight",
            "Requests being served now, by service.",
            labels=["service"],
        )
        up = GaugeMetricFamily(
            "inferclub_agent_service_up",
            "1 when the service's last health check passed, else 0.",
            labels=["service", "type", "engine"],
        )
        for name, st in self.table.states.items():
            in_flight.add_metric([name], st.in_flight)
            up.add_metric([name, st.service.type, st.service.engine], 1 if st.up else 0)
        yield in_flight
        yield up
