"""What a browser request must pass before the hub reads its body: its size and its origin.

Every route outside ``/v1`` takes a small form at most (``max_web_body``). A state-changing
browser request must come from the hub's own origin: browsers send ``Origin`` on every
cross-site ``POST`` (a form as well as ``fetch``), and the hub also accepts ``Referer`` when
``Origin`` is absent. A request with neither is not a cross-site browser request (a script,
``curl``): it is let through to the XSRF token check, which it must pass like any other.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import tornado.httputil
import tornado.web

#: Methods that change nothing: no Origin or XSRF check, as in Tornado's own XSRF rule.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: An oversize body up to this many times its limit is drained before the 413 is sent (the
#: client then reads its answer on a healthy connection); anything larger is never read.
DISCARD_FACTOR = 4
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of ``url``, lower case, without a default port; None when
    ``url`` is not an http(s) URL with a host."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return (
        f"{scheme}://{host}"
        if port in (None, _DEFAULT_PORTS[scheme])
        else f"{scheme}://{host}:{port}"
    )


def own_origin(request: tornado.httputil.HTTPServerRequest, public_url: str) -> str | None:
    """The origin the hub's own pages have: ``public_url``'s, else the request's own host (a
    local install reached at whatever address the browser used)."""
    if public_url:
        return origin_of(public_url)
    return origin_of(f"{request.protocol}://{request.host}")


def check_origin(request: tornado.httputil.HTTPServerRequest, public_url: str) -> None:
    """403 when a state-changing request names another origin in ``Origin`` (or, without
    it, in ``Referer``). ``Origin: null`` (a sandboxed frame, a privacy redirect) is refused."""
    claimed = request.headers.get("Origin")
    if claimed is None:
        referer = request.headers.get("Referer")
        if referer is None:
            return
        claimed = referer
    if origin_of(claimed) is None or origin_of(claimed) != own_origin(request, public_url):
        raise tornado.web.HTTPError(
            403, "Cross-site request refused: it does not come from this hub's own pages."
        )


class FormBody:
    """A small request body collected as it arrives, up to ``limit`` bytes. Past the limit
    the bytes are dropped as they come and :attr:`too_large` is set."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.too_large = False
        self._parts: list[bytes] = []
        self._size = 0

    def refuse_early(self, request: tornado.httputil.HTTPServerRequest) -> bool:
        """Set the connection's cap for this request; True when its ``Content-Length``
        already says it is too large (the caller answers 413 before reading anything)."""
        connection: Any = request.connection
        length = request.headers.get("Content-Length")
        if length is None:
            # Chunked: collected up to the limit and drained a little past it, then cut.
            connection.set_max_body_size(DISCARD_FACTOR * self.limit)
            return False
        announced = int(length) if length.isdigit() else 0
        if announced <= self.limit:
            connection.set_max_body_size(self.limit)
            return False
        # A body a few times the limit is read and dropped so that the client reads its 413
        # instead of a reset; a larger one is never read (Tornado closes the connection).
        connection.set_max_body_size(
            announced if announced <= DISCARD_FACTOR * self.limit else self.limit
        )
        self.too_large = True
        return True

    def add(self, chunk: bytes) -> None:
        if self.too_large:
            return
        self._size += len(chunk)
        if self._size > self.limit:
            self.too_large = True
            self._parts = []
            return
        self._parts.append(chunk)

    def drop(self) -> None:
        self._parts = []

    def take(self) -> bytes:
        body, self._parts = b"".join(self._parts), []
        return body


def parse_form(request: tornado.httputil.HTTPServerRequest, body: bytes) -> None:
    """Fill ``request``'s body and its arguments from ``body``, as Tornado does for a
    request it reads whole."""
    request.body = body
    tornado.httputil.parse_body_arguments(
        request.headers.get("Content-Type", ""),
        body,
        request.body_arguments,
        request.files,
        request.headers,
    )
    for name, values in request.body_arguments.items():
        request.arguments.setdefault(name, []).extend(values)
