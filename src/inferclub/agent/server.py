"""The callback server: the hub's requests come in at `/v1/...` and go out to the engines.

Every request must carry the latest callback token from the hub. The service is chosen by the
`X-InferClub-Service` header, or by the body's `model` and the path's service type. The engine
response is relayed chunk by chunk (write, flush, repeat); when the hub disconnects, the
forwarding task is cancelled and the engine connection closed at once.
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
from tornado.iostream import StreamClosedError

from inferclub import wire
from inferclub.agent.heartbeat import CallbackAuth
from inferclub.agent.services import ServiceState, ServiceTable, describe
from inferclub.engines import EngineRequest, EngineResponse
from inferclub.multipart import boundary_of, get_field, set_field
from inferclub.openai_errors import error_body, type_for_status

log = logging.getLogger("inferclub.agent.server")

#: Seconds to wait for an engine's answer, and between two chunks, when a service sets none.
DEFAULT_TIMEOUT = 600.0
CONNECT_TIMEOUT = 10.0
MAX_ERROR_BODY = 1 << 20
#: Request headers passed on to engines; the hub's Authorization is never among them.
FORWARDED_REQUEST_HEADERS = ("Content-Type", "Accept")
#: Response headers relayed back to the hub.
RELAYED_RESPONSE_HEADERS = ("Content-Type", "Content-Disposition", "Retry-After")


@dataclass
class Runtime:
    """What the handlers need from the running agent."""

    table: ServiceTable
    auth: CallbackAuth
    session: aiohttp.ClientSession
    #: Called when a service failed a request, so it is probed (and maybe withdrawn) now.
    service_failed: Callable[[ServiceState], None]
    draining: bool = False


class ApiError(tornado.web.HTTPError):
    """An error answered in the OpenAI shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(status)
        self.body = error_body(message, type or type_for_status(status), param, code)


def requested_model(body: bytes, content_type: str) -> str | None:
    """The `model` of a JSON or multipart request body."""
    if boundary_of(content_type):
        return get_field(body, content_type, "model")
    try:
        data = json.loads(body) if body else None
    except ValueError:
        return None
    model = data.get("model") if isinstance(data, dict) else None
    return model if isinstance(model, str) and model else None


def with_model(body: bytes, content_type: str, model: str) -> bytes:
    """`body` with its `model` replaced; multipart bodies keep every other byte."""
    if boundary_of(content_type):
        return set_field(body, content_type, "model", model)
    data = json.loads(body)
    data["model"] = model
    return json.dumps(data).encode()


class ApiHandler(tornado.web.RequestHandler):
    SUPPORTED_METHODS = ("GET", "POST", "PUT", "DELETE")

    def initialize(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._task: asyncio.Task[None] | None = None
        self._hub_gone = False

    def prepare(self) -> None:
        verdict = self.runtime.auth.check(self.request.headers.get("Authorization"))
        if verdict == "not_ready":
            raise ApiError(
                503, "this agent has not registered with the hub yet", "service_unavailable"
            )
        if verdict != "ok":
            raise ApiError(401, "missing or wrong callback token", code="invalid_api_key")
        if self.runtime.draining:
            raise ApiError(503, "this agent is shutting down", "service_unavailable")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        body = (
            exc.body
            if isinstance(exc, ApiError)
            else error_body(self._reason, type_for_status(status_code))
        )
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def on_connection_close(self) -> None:
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

    async def put(self, path: str) -> None:
        await self.proxy(path)

    async def delete(self, path: str) -> None:
        await self.proxy(path)

    def write_models(self) -> None:
        data = [
            {"id": model, "object": "model", "owned_by": ad.name, "type": ad.type}
            for ad in self.runtime.table.advertised()
            for model in ad.models
        ]
        self.finish({"object": "list", "data": data})

    # -- proxying ------------------------------------------------------------------------------

    def select(self, path: str, model: str | None) -> ServiceState:
        name = self.request.headers.get(wire.SERVICE_HEADER)
        table = self.runtime.table
        if name:
            state = table.get(name)
            if state is None:
                raise ApiError(
                    404, f"this agent has no service named {name!r}", code="service_not_found"
                )
            return state
        service_type = wire.ENDPOINT_TYPES.get(path)
        if service_type is None:
            raise ApiError(404, f"no service type serves /v1{path}", code="not_found")
        if model is None:
            raise ApiError(400, "the request names no model", param="model")
        state = table.find(model, service_type)
        if state is None:
            raise ApiError(
                404,
                f"the model `{model}` is not served by this agent as {service_type}",
                code="model_not_found",
            )
        return state

    async def proxy(self, path: str) -> None:
        path = "/" + path
        content_type = self.request.headers.get("Content-Type", "")
        body = self.request.body
        model = requested_model(body, content_type)
        state = self.select(path, model)
        if state.full():
            raise ApiError(
                429,
                f"service {state.name!r} is at its max_concurrency "
                f"({state.service.max_concurrency}); try again shortly",
                code="rate_limit_exceeded",
            )
        engine_model = state.engine_model(model) if model else None
        if model and engine_model and engine_model != model:
            body = with_model(body, content_type, engine_model)
        headers = {
            h: self.request.headers[h]
            for h in FORWARDED_REQUEST_HEADERS
            if h in self.request.headers
        }
        # Compressed answers would be decompressed (buffered) by the client; ask for none.
        headers["Accept-Encoding"] = "identity"
        request = EngineRequest(
            method=self.request.method or "POST",
            path=path,
            headers=headers,
            body=body,
            query=self.request.query,
            model=engine_model,
        )
        state.in_flight += 1
        try:
            if self._hub_gone:
                return
            self._task = asyncio.ensure_future(self.forward(state, request))
            try:
                await self._task
            except asyncio.CancelledError:
                if not self._hub_gone:
                    raise
                log.info("hub disconnected; cancelled the request to service %s", state.name)
        finally:
            state.in_flight -= 1

    async def forward(self, state: ServiceState, request: EngineRequest) -> None:
        service, engine = state.service, state.engine
        prepared = engine.prepare_request(service, request)
        url = engine.forward_url(service, prepared)
        read_timeout = service.timeout or DEFAULT_TIMEOUT
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=min(CONNECT_TIMEOUT, read_timeout), sock_read=read_timeout
        )
        try:
            resp = await self.runtime.session.request(
                prepared.method,
                url,
                data=prepared.body or None,
                headers=prepared.headers,
                timeout=timeout,
                allow_redirects=False,
            )
        except TimeoutError:
            raise ApiError(
                504,
                f"service {service.name!r} did not answer within {read_timeout:g}s",
                "timeout_error",
                "engine_timeout",
            ) from None
        except aiohttp.ClientError as exc:
            self.runtime.service_failed(state)
            raise ApiError(
                502,
                f"service {service.name!r} ({service.engine}) is unreachable: {describe(exc)}",
                "server_error",
                "engine_unreachable",
            ) from None
        try:
            if resp.status >= 400:
                await self.relay_error(state, resp)
            else:
                await self.relay(state, prepared, resp)
        except StreamClosedError:
            log.info("hub disconnected from a response of service %s", service.name)
        finally:
            # Closing (not releasing) an unfinished response drops the engine connection, which
            # is how the engine learns that nobody is listening any more.
            if resp.content.at_eof():
                resp.release()
            else:
                resp.close()

    async def relay_error(self, state: ServiceState, resp: aiohttp.ClientResponse) -> None:
        parts: list[bytes] = []
        size = 0
        try:
            async for chunk in resp.content.iter_any():
                parts.append(chunk)
                size += len(chunk)
                if size >= MAX_ERROR_BODY:
                    break
        except (TimeoutError, aiohttp.ClientError):
            pass  # an incomplete error body still says something
        content_type = resp.headers.get("Content-Type", "")
        error = state.engine.normalise_error(
            state.service, resp.status, b"".join(parts)[:MAX_ERROR_BODY], content_type
        )
        self.set_status(resp.status)
        if "Retry-After" in resp.headers:
            self.set_header("Retry-After", resp.headers["Retry-After"])
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(error))

    async def relay(
        self, state: ServiceState, request: EngineRequest, resp: aiohttp.ClientResponse
    ) -> None:
        headers = {h: resp.headers[h] for h in RELAYED_RESPONSE_HEADERS if h in resp.headers}
        out = state.engine.translate_response(
            state.service, request, EngineResponse(resp.status, headers, resp.content.iter_any())
        )
        self.set_status(out.status)
        self.clear_header("Content-Type")
        for name, value in out.headers.items():
            self.set_header(name, value)
        # Tornado leaves Nagle's algorithm on until finish(): small streamed chunks would wait
        # for the hub's delayed ACKs.
        stream = getattr(self.request.connection, "stream", None)
        if stream is not None:
            stream.set_nodelay(True)
        try:
            async for chunk in out.chunks:
                self.write(chunk)
                await self.flush()
        except (TimeoutError, aiohttp.ClientError) as exc:
            reason = describe(exc)
            log.warning("service %s failed mid-response: %s", state.name, reason)
            if out.headers.get("Content-Type", "").startswith("text/event-stream"):
                error = error_body(
                    f"service {state.name!r} failed mid-stream: {reason}",
                    "server_error",
                    code="engine_stream_error",
                )
                self.write(b"data: " + json.dumps(error).encode() + b"\n\n")
            else:
                # No way to signal an error inside an arbitrary body: cut the connection so the
                # hub sees a truncated response rather than a complete-looking one.
                self.request.connection.close()  # type: ignore[union-attr]
                return
        self.finish()


class LiveHandler(tornado.web.RequestHandler):
    """`GET /health`: the agent process is alive (no details; needs no token)."""

    def get(self) -> None:
        self.finish({"status": "ok"})


def make_app(runtime: Runtime) -> tornado.web.Application:
    """The callback server's application; opens no sockets."""
    return tornado.web.Application(
        [
            (r"/v1/(.*)", ApiHandler, {"runtime": runtime}),
            (r"/health", LiveHandler),
        ],
    )
