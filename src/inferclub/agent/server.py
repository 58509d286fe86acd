"""The callback server: the hub's requests come in at `/v1/...` and go out to the engines.

Every request must carry the latest callback token from the hub. The service is chosen by the
`X-InferClub-Service` header, or by the body's `model` and the endpoint's service type
(``wire.ENDPOINT_TYPES``). :mod:`inferclub.agent.forward` sends the request on and relays the
answer; when the hub disconnects, the forwarding task is cancelled and the engine connection
closed at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import tornado.web

from inferclub import wire
from inferclub.agent.forward import engine_request, forward, requested_model
from inferclub.agent.heartbeat import CallbackAuth
from inferclub.agent.services import ServiceState, ServiceTable
from inferclub.openai_errors import OpenAIError

log = logging.getLogger("inferclub.agent.server")

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
    auth: CallbackAuth
    session: aiohttp.ClientSession
    #: Called when a service failed a request, so it is probed (and maybe withdrawn) now.
    service_failed: Callable[[ServiceState], None]
    draining: bool = False


class BaseHandler(tornado.web.RequestHandler):
    """Base of every agent handler: any error is answered with OpenAI's error object."""

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
            # Expected answers (wrong token, unknown model): the access log has the status.
            log.debug("%s %s -> %d %s", self.request.method, self.request.path, value.status, value)
        else:
            super().log_exception(typ, value, tb)


@tornado.web.stream_request_body
class CallbackHandler(BaseHandler):
    """`GET`/`POST /v1/...` from the hub (the OpenAI API of the agent's services).

    The body is streamed in only after :meth:`prepare` accepted the headers: a peer without
    the callback token, or asking for a path the hub never sends, gets its answer before a
    byte of its (perhaps 200 MiB) body is read.
    """

    SUPPORTED_METHODS = ("GET", "POST")

    def initialize(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._task: asyncio.Task[None] | None = None
        self._hub_gone = False
        self._chunks: list[bytes] = []

    def data_received(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    def prepare(self) -> None:
        verdict = self.runtime.auth.check(self.request.headers.get(wire.AUTH_HEADER))
        if verdict == "not_ready":
            raise OpenAIError(
                503, "this agent has not registered with the hub yet", "service_unavailable"
            )
        if verdict != "ok":
            raise OpenAIError(401, "missing or wrong callback token", code="invalid_api_key")
        if self.runtime.draining:
            raise OpenAIError(503, "this agent is shutting down", "service_unavailable")
        if (self.request.method, self.request.path) not in FORWARDED:
            raise OpenAIError(
                404,
                f"this agent does not forward {self.request.method} {self.request.path}",
                code="not_found",
            )

    def on_connection_close(self) -> None:
        super().on_connection_close()  # fails a streamed body's future, freeing its chunks
        self._hub_gone = True
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def get(self, path: str) -> None:
        if path == "models" and not self.request.headers.get(wire.SERVICE_HEADER):
            self.write_models()
            return
        await self.proxy(path)

    async def post(self, path: str) -> None:
        await self.proxy(path)

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

    async def proxy(self, path: str) -> None:
        path = "/" + path
        body = b"".join(self._chunks)
        self._chunks = []
        model = requested_model(body, self.request.headers.get("Content-Type", ""))
        state = self.select(path, model)
        if state.full():
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
        try:
            if self._hub_gone:
                return
            runtime = self.runtime
            self._task = asyncio.ensure_future(
                forward(self, runtime.session, state, request, runtime.service_failed)
            )
            try:
                await self._task
            except asyncio.CancelledError:
                if not self._hub_gone:
                    raise
                log.info("hub disconnected; cancelled the request to service %s", state.name)
        finally:
            state.in_flight -= 1


class LiveHandler(BaseHandler):
    """`GET /health`: the agent process is alive (no details; needs no token)."""

    def get(self) -> None:
        self.finish({"status": "ok"})


def make_app(runtime: Runtime) -> tornado.web.Application:
    """The callback server's application; opens no sockets."""
    return tornado.web.Application(
        [
            (r"/v1/(.*)", CallbackHandler, {"runtime": runtime}),
            (r"/health", LiveHandler),
        ],
    )
