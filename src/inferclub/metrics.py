"""Prometheus metrics, for hub and agent alike: the ``/metrics`` handler and its guard.

Each program builds its metrics in a :class:`~prometheus_client.CollectorRegistry` of its own
(never the library's global one), so several hubs or agents in one process (tests) stay apart.
Values that already live in memory (requests in flight, history backlog) are read at scrape
time by a custom collector instead of being updated on the request path.

``/metrics`` is off unless configured: with a token it answers only ``Authorization: Bearer
<token>``; on its own listen address (``metrics_listen``) it needs the token only if one is set.
"""

from __future__ import annotations

import hmac

import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

#: The path scrapers ask for, on the main port (with a token) or on ``metrics_listen``.
METRICS_PATH = "/metrics"


class MetricsHandler(tornado.web.RequestHandler):
    """``GET /metrics``: the text exposition format, rendered by prometheus-client."""

    def initialize(self, registry: CollectorRegistry, token: str) -> None:
        self.registry = registry
        self.token = token

    def set_default_headers(self) -> None:
        self.set_header("Server", "inferclub")  # not Tornado's, which names its version

    def check_xsrf_cookie(self) -> None:
        """GET only, and no cookies are read."""

    def get(self) -> None:
        if self.token and not _bearer_matches(
            self.request.headers.get("Authorization"), self.token
        ):
            self.set_status(401)
            self.set_header("WWW-Authenticate", 'Bearer realm="metrics"')
            self.finish("a metrics token is required\n")
            return
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.set_header("Cache-Control", "no-store")
        self.finish(generate_latest(self.registry))


def _bearer_matches(header: str | None, token: str) -> bool:
    scheme, _, given = (header or "").partition(" ")
    # Constant time: the token is a secret a scraper presents on every scrape.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def metrics_route(registry: CollectorRegistry, token: str) -> tuple[str, type, dict[str, object]]:
    """The ``/metrics`` route for an application (add it only when metrics are enabled)."""
    return (METRICS_PATH, MetricsHandler, {"registry": registry, "token": token})


def metrics_app(registry: CollectorRegistry, token: str = "") -> tornado.web.Application:
    """The application of a separate metrics listener (``metrics_listen``): ``/metrics`` only."""
    return tornado.web.Application([metrics_route(registry, token)])
