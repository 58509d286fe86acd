"""The callback server: the hub's requests come in at `/v1/...` and go out to the engines.

Every request must be signed by the hub, for this agent's provider id (docs/signing.md): the
headers are checked before any body is read, the signature over the body once it is in. The
service is chosen by the `X-InferClub-Service` header, or by the body's `model` and the
endpoint's service type (``wire.ENDPOINT_TYPES``). :mod:`inferclub.agent.forward` sends the
request on and relays the answer; when the hub disconnects, the forwarding task is cancelled
and the engine connection closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import tornado.web

from inferclub import wire
from inferclub.agent.forward import engine_request, forward, requested_model
from inferclub.agent.heartbeat import HubAuth
from inferclub.agent.metrics import AgentMetrics
from inferclub.agent.services import ServiceState, ServiceTable
from inferclub.metrics import metrics_route
from inferclub.openai_errors import OpenAIError, too_large
from inferclub.signing import SignatureRejected

log = logging.getLogger("inferclub.agent.server")
access_log = logging.getLogger("tornado.access")

#: Seconds a request may wait for a slot of a service at its ``max_concurrency`` before a 429:
#: long enough to cover the moment between the hub counting a request done and this agent
#: doing so, short enough that a truly busy service hands the request on quickly.
SLOT_GRACE = 1.0

#: Everything the hub sends an agent: ``POST`` to an endpoint it routes, and ``GET /models``.
#: Matched against the raw request path, so ``..``, ``%2e%2e``, ``%2f`` and ``//`` never
#: reach an engine: they are simply not on the list.
FORWARDED: frozenset[tuple[str, str]] = frozenset(
    {("POST", "/v1" + path) for path in wire.ENDPOINT_TYPES} | {("GET", "/v1/models")}
)


@dataclass
class Runtime:
    """What the handlers need from the running agent."""

    table: ServiceTable
    auth: HubAuth
    session: aiohttp.ClientSession
    #: Called when a service failed a request, so it is probed (and maybe withdrawn) now.
    service_failed: Callable[[ServiceState], None]
    metrics: AgentMetrics
    #: Bearer token for /metrics on this server; empty: no /metrics here.
    metrics_token: str = ""
    draining: bool = False
    #: The largest request body forwarded: a larger ``Content-Length`` gets an OpenAI 413 before
    #: any of it is read (a hub with higher limits than this agent's gets a clear answer).
    max_body: int = wire.DEFAULT_BODY_CEILING


class BaseHandler(tornado.web.RequestHandler):
    """Base of every agent handler: any error is answered with OpenAI's error object."""

    def set_default_headers(self) -> None:
        self.set_header("Server", "inference-club-agent")  # not Tornado's, with its version

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        err = exc if isinstance(exc, OpenAIError) else OpenAIError(status_code, self._reason)
        self.set_status(err.status)
        self.set_header("Content-Type", "application/json")
        for name, value in err.headers.items():
            self.set_header(name, value)
        self.finish(json.dumps(err.body()))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, OpenAIError):
            # Expected answers (bad signature, unknown model): the access log has the status.
            log.debug("%s %s -> %d %s", self.request.method, self.request.path, value.status, value)
        else:
            super().log_exception(typ, value, tb)


@tornado.web.stream_request_body
class CallbackHandler(BaseHandler):
    """`GET`/`POST /v1/...` from the hub (the OpenAI API of the agent's services).

    The body is streamed in only after :meth:`prepare` accepted the headers: an unsigned or
    stale request, or one for a path the hub never sends, gets its answer before a byte of its
    (perhaps 200 MiB) body is read. The signature itself is checked once the body is in,
    before anything reaches an engine.
    """

    SUPPORTED_METHODS = ("GET", "POST")
    expected_refusal = False

    def initialize(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._task: asyncio.Task[None] | None = None
        self._hub_gone = False
        self._chunks: list[bytes] = []

    def data_received(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    def prepare(self) -> None:
        auth = self.runtime.auth
        if not auth.ready:
            # The hub checks it can reach a new agent while that agent's first heartbeat is
            # still in flight: this answer is expected then, not worth an ERROR line.
            self.expected_refusal = True
            raise OpenAIError(
                503, "this agent has not registered with the hub yet", "service_unavailable"
            )
        with refused_signature():
            auth.check_headers(self.request.headers)
        if self.runtime.draining:
            raise OpenAIError(503, "this agent is shutting down", "service_unavailable")
        if (self.request.method, self.request.path) not in FORWARDED:
            raise OpenAIError(
                404,
                f"this agent does not forward {self.request.method} {self.request.path}",
                code="not_found",
            )
        if int(self.request.headers.get("Content-Length") or 0) > self.runtime.max_body:
            raise too_large(self.runtime.max_body, "request body (for this agent)")

    def on_connection_close(self) -> None:
        super().on_connection_close()  # fails a streamed body's future, freeing its chunks
        self._hub_gone = True
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def get(self, path: str) -> None:
        body = self.verified_body()
        if path == "models" and not self.request.headers.get(wire.SERVICE_HEADER):
            self.write_models()
            return
        await self.proxy(path, body)

    async def post(self, path: str) -> None:
        await self.proxy(path, self.verified_body())

    def verified_body(self) -> bytes:
        """The body, once its signature was checked (the request as received: method, raw
        target, body bytes); a 401 otherwise."""
        body = b"".join(self._chunks)
        self._chunks = []
        request = self.request
        with refused_signature():
            self.runtime.auth.verify(request.method or "", request.uri or "", request.headers, body)
        return body

    def write_models(self) -> None:
        data = [
            {"id": model, "object": "model", "owned_by": ad.name, "type": ad.type}
            for ad in self.runtime.table.advertised()
            for model in ad.models
        ]
        self.finish({"object": "list", "data": data})

    def select(self, path: str, model: str | None) -> ServiceState:
        """The service named by the hub, else the one serving ``model`` for ``path``'s type."""
        name = self.request.headers.get(wire.SERVICE_HEADER)
        table = self.runtime.table
        if name:
            state = table.get(name)
            if state is None:
                raise OpenAIError(
                    404, f"this agent has no service named {name!r}", code="service_not_found"
                )
            return state
        service_type = wire.ENDPOINT_TYPES.get(path)
        if service_type is None:
            raise OpenAIError(404, f"no service type serves /v1{path}", code="not_found")
        if model is None:
            raise OpenAIError(400, "the request names no model", param="model")
        state = table.find(model, service_type)
        if state is None:
            raise OpenAIError(
                404,
                f"the model `{model}` is not served by this agent as {service_type}",
                code="model_not_found",
            )
        return state

    async def proxy(self, path: str, body: bytes) -> None:
        path = "/" + path
        model = requested_model(body, self.request.headers.get("Content-Type", ""))
        state = self.select(path, model)
        if not await state.wait_free(SLOT_GRACE):
            raise OpenAIError(
                429,
                f"service {state.name!r} is at its max_concurrency "
                f"({state.service.max_concurrency}); try again shortly",
                code="rate_limit_exceeded",
            )
        request = engine_request(
            state,
            self.request.method or "POST",
            path,
            self.request.headers,
            body,
            self.request.query,
            model,
        )
        state.in_flight += 1
        started = time.perf_counter()
        outcome = "error"
        try:
            if self._hub_gone:
                return
            runtime = self.runtime
            self._task = asyncio.ensure_future(
                forward(self, runtime.session, state, request, runtime.service_failed)
            )
            try:
                await self._task
                outcome = "ok" if self.get_status() < 400 else "error"
            except asyncio.CancelledError:
                if not self._hub_gone:
                    raise
                outcome = "cancelled"
                # At the drain deadline this agent closes what is left itself: not the hub.
                why = "shutting down" if self.runtime.draining else "hub disconnected"
                log.info("%s; cancelled the request to service %s", why, state.name)
        finally:
            state.release()
            self.runtime.metrics.request_done(state.name, time.perf_counter() - started, outcome)


@contextlib.contextmanager
def refused_signature() -> Iterator[None]:
    """A refused signature is a 401 whose ``code`` says why (``signature_expired``...)."""
    try:
        yield
    except SignatureRejected as exc:
        raise OpenAIError(401, exc.message, "invalid_request_error", exc.code) from None


class LiveHandler(BaseHandler):
    """`GET /health`: the agent process is alive (no details; needs no signature)."""

    def get(self) -> None:
        self.finish({"status": "ok"})


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access log, except that the 503 answered before the first heartbeat
    reply (see :meth:`CallbackHandler.prepare`) is INFO: a healthy start logs no ERROR."""
    status = handler.get_status()
    if getattr(handler, "expected_refusal", False) or status < 400:
        level = logging.INFO
    else:
        level = logging.WARNING if status < 500 else logging.ERROR
    request = handler.request
    access_log.log(
        level,
        "%d %s %.2fms",
        status,
        handler._request_summary(),
        1000.0 * request.request_time(),
    )


def make_app(runtime: Runtime) -> tornado.web.Application:
    """The callback server's application; opens no sockets."""
    routes: list[Any] = [
        (r"/v1/(.*)", CallbackHandler, {"runtime": runtime}),
        (r"/health", LiveHandler),
    ]
    if runtime.metrics_token:
        routes.append(metrics_route(runtime.metrics.registry, runtime.metrics_token))
    return tornado.web.Application(routes, log_function=log_request)
