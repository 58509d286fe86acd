"""The per-request metrics are plain numbers turned into Prometheus families at scrape time
(hub/metrics.py: RequestCounts). What a scrape shows must be what prometheus-client's own
Counter and Histogram would show for the same requests, bucket bounds included."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from inferclub.hub.metrics import DURATION_BUCKETS, TTFB_BUCKETS, RequestCounts
from inferclub.hub.store import RequestRecord

#: (type, status, provider, ttfb ms, duration ms): values on bucket bounds, between them,
#: past the last one, and missing (a request refused before any provider answered).
REQUESTS = [
    ("llm", 200, "rig", 5.0, 10.0),
    ("llm", 200, "rig", 4.999, 10.001),
    ("llm", 200, "rig", 250.0, 1800_000.0),
    ("llm", 200, "other", 400_000.0, 2_000_000.0),
    ("llm", 404, "", None, 0.2),
    ("stt", 502, "rig", 0.0, None),
    (None, 0, "", None, None),
]


def exposition(registry: CollectorRegistry) -> set[str]:
    """The scrape's sample lines, without the ``_created`` series only prometheus-client's
    own objects add, and without comments."""
    lines = generate_latest(registry).decode().splitlines()
    return {line for line in lines if not line.startswith("#") and "_created" not in line}


def test_a_scrape_shows_what_prometheus_clients_own_metrics_would() -> None:
    ours = CollectorRegistry()
    counts = RequestCounts()
    ours.register(counts)
    theirs = CollectorRegistry()
    requests = Counter("inferclub_requests", "-", ["type", "status", "provider"], registry=theirs)
    ttfb = Histogram(
        "inferclub_request_ttfb_seconds", "-", ["type"], buckets=TTFB_BUCKETS, registry=theirs
    )
    duration = Histogram(
        "inferclub_request_duration_seconds",
        "-",
        ["type"],
        buckets=DURATION_BUCKETS,
        registry=theirs,
    )
    for i, (kind, status, provider, ttfb_ms, duration_ms) in enumerate(REQUESTS):
        row = RequestRecord(
            f"req_{i}",
            1,
            "/v1/chat/completions",
            1000.0,
            status,
            type=kind,
            ttfb_ms=ttfb_ms,
            duration_ms=duration_ms,
        )
        counts.request_done(row, provider)
        requests.labels(kind or "unknown", str(status), provider).inc()
        if ttfb_ms is not None:
            ttfb.labels(kind or "unknown").observe(ttfb_ms / 1000)
        if duration_ms is not None:
            duration.labels(kind or "unknown").observe(duration_ms / 1000)
    shown = exposition(ours)
    assert shown == exposition(theirs)
    # The sample lines themselves, so a change on both sides still shows here.
    assert 'inferclub_requests_total{provider="rig",status="200",type="llm"} 3.0' in shown
    assert 'inferclub_request_ttfb_seconds_bucket{le="0.005",type="llm"} 2.0' in shown
    assert 'inferclub_request_duration_seconds_bucket{le="1800.0",type="llm"} 4.0' in shown
    assert 'inferclub_request_duration_seconds_count{type="llm"} 5.0' in shown
