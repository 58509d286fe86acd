"""The hub processes' own listener (``internal_listen``): requests for a tunnelled provider
whose tunnel another process holds.

A tunnel lands on one hub process (a worker of ``--workers``, or one of several hubs on
PostgreSQL). That process records its internal URL as the provider's callback URL; another
process that routes a request there sends it, signed as for any agent, to this listener, which
checks the hub's own signature (every process shares the hub key) for the provider it names,
and relays it into the tunnel. The answer goes back chunk by chunk; when the other process
goes away, the tunnel's stream is cancelled.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import TYPE_CHECKING, Any

import tornado.web
from tornado.iostream import StreamClosedError

from inferclub import signing, wire
from inferclub.hub.relay.connect import Upstream, no_answer
from inferclub.hub.relay.meter import new_request_id
from inferclub.hub.tunnels import PROVIDER_ID_HEADER, Tunnel
from inferclub.openai_errors import OpenAIError

if TYPE_CHECKING:
    from inferclub.hub.app import Hub

log = logging.getLogger("inferclub.internal")

#: A request id as the hubs make them (``req_`` and hex digits), or near enough to echo.
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

#: Request headers passed into the tunnel: those ``Upstream.for_route`` sets.
PASSED = (
    "Content-Type",
    wire.SERVICE_HEADER,
    signing.TIMESTAMP_HEADER,
    signing.SIGNATURE_HEADER,
    signing.REQUEST_ID_HEADER,
)


@tornado.web.stream_request_body
class InternalHandler(tornado.web.RequestHandler):
    def initialize(self, hub: Hub) -> None:
        self.hub = hub
        self._chunks: list[bytes] = []
        self._task: asyncio.Task[None] | None = None

    def data_received(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    def set_default_headers(self) -> None:
        self.set_header("Server", "inferclub")  # not Tornado's, which names its version
        # Every answer, errors included, carries the request's id: the one the forwarding
        # process sent (its client's, so its logs and the client's error agree) when it
        # looks like one, else a new one.
        given = self.request.headers.get(signing.REQUEST_ID_HEADER, "")
        request_id = given if _REQUEST_ID.fullmatch(given) else new_request_id()
        self.set_header(signing.REQUEST_ID_HEADER, request_id)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        err = exc if isinstance(exc, OpenAIError) else OpenAIError(status_code, self._reason)
        self.set_status(err.status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(err.body()))

    async def post(self, _path: str) -> None:
        body, self._chunks = b"".join(self._chunks), []
        provider_id = self.request.headers.get(PROVIDER_ID_HEADER, "")
        # The signature first: an unsigned request learns nothing, not even which
        # providers have their tunnel here.
        try:
            self.hub.internal_verifier.verify(
                "POST", self.request.uri or "", self.request.headers, body, provider_id
            )
        except signing.SignatureRejected as exc:
            raise OpenAIError(401, exc.message, "invalid_request_error", exc.code) from None
        held = self.hub.relay.tunnels.get(int(provider_id)) if provider_id.isdigit() else None
        if held is None:
            raise OpenAIError(
                502,
                "The hub process that held this provider's tunnel holds it no more (its "
                "agent disconnected, or dialled another hub process).",
                "server_error",
                "upstream_unreachable",
            )
        headers = {h: self.request.headers[h] for h in PASSED if h in self.request.headers}
        upstream = Upstream(
            "http://internal" + (self.request.uri or ""),
            headers,
            held.provider,
            int(provider_id),
            tunnel=True,
        )
        self._task = asyncio.ensure_future(self._relay(held, upstream, body))
        try:
            await self._task
        except asyncio.CancelledError:
            if not self._task.cancelled():
                raise

    async def _relay(self, held: Tunnel, upstream: Upstream, body: bytes) -> None:
        first_byte = self.hub.settings.first_byte_timeout
        try:
            async with asyncio.timeout(first_byte):
                resp = await held.open(upstream, body)
        except TimeoutError:
            raise no_answer(upstream, first_byte) from None
        try:
            self.set_status(resp.status)
            for name, value in resp.headers.items():
                self.set_header(name, value)
            async for chunk in resp.content.iter_any():
                self.write(chunk)
                await self.flush()
        except (OSError, StreamClosedError):
            # The answer broke mid-way: the front process sees its connection break too.
            if self.request.connection is not None:
                self.request.connection.close()  # type: ignore[attr-defined]
        finally:
            resp.close()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the stream on the tunnel is cancelled with it


class NotFoundHandler(InternalHandler):
    """Any path but ``/v1/...``: a 404, OpenAI-shaped like every answer of the listener."""

    def prepare(self) -> None:
        raise OpenAIError(404, "Not Found", "invalid_request_error")


def internal_app(hub: Hub) -> tornado.web.Application:
    return tornado.web.Application(
        [(r"/v1/(.*)", InternalHandler, {"hub": hub})],
        default_handler_class=NotFoundHandler,
        default_handler_args={"hub": hub},
    )
