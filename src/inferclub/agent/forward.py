"""Forwarding one request from the hub to an engine, and relaying the engine's answer.

The engine's answer is relayed chunk by chunk (write, flush, repeat), never collected; error
answers are read (up to :data:`MAX_ERROR_BODY`) and turned into OpenAI's error object by the
engine's ``normalise_error``. Closing the engine connection early is how an engine learns that
nobody listens any more, so an unfinished response is closed, not released.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import aiohttp
import tornado.web
from tornado.httputil import HTTPHeaders
from tornado.iostream import StreamClosedError

from inferclub.agent.services import ServiceState, describe
from inferclub.engines import EngineRequest, EngineResponse
from inferclub.multipart import boundary_of, get_field, set_field
from inferclub.openai_errors import OpenAIError, error_body

log = logging.getLogger("inferclub.agent.forward")

#: Seconds to wait for an engine's answer, and between two chunks, when a service sets none.
DEFAULT_TIMEOUT = 600.0
CONNECT_TIMEOUT = 10.0
MAX_ERROR_BODY = 1 << 20
#: Request headers passed on to engines; the hub's Authorization is never among them.
FORWARDED_REQUEST_HEADERS = ("Content-Type", "Accept")
#: Response headers relayed back to the hub.
RELAYED_RESPONSE_HEADERS = ("Content-Type", "Content-Disposition", "Retry-After")


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


def engine_request(
    state: ServiceState,
    method: str,
    path: str,
    headers: HTTPHeaders,
    body: bytes,
    query: str,
    model: str | None,
) -> EngineRequest:
    """The request for ``state``'s engine: the model's alias resolved, the hub's headers left
    behind (only :data:`FORWARDED_REQUEST_HEADERS` pass)."""
    engine_model = state.engine_model(model) if model else None
    if model and engine_model and engine_model != model:
        body = with_model(body, headers.get("Content-Type", ""), engine_model)
    out = {h: headers[h] for h in FORWARDED_REQUEST_HEADERS if h in headers}
    # Compressed answers would be decompressed (buffered) by the client; ask for none.
    out["Accept-Encoding"] = "identity"
    return EngineRequest(
        method=method, path=path, headers=out, body=body, query=query, model=engine_model
    )


async def forward(
    handler: tornado.web.RequestHandler,
    session: aiohttp.ClientSession,
    state: ServiceState,
    request: EngineRequest,
    service_failed: Callable[[ServiceState], None],
) -> None:
    """Send ``request`` to ``state``'s engine and relay the answer into ``handler``.

    Raises :class:`OpenAIError` (504, 502) when the engine does not answer; ``service_failed``
    is called when it cannot be reached, so it is probed (and maybe withdrawn) at once.
    """
    service, engine = state.service, state.engine
    prepared = engine.prepare_request(service, request)
    read_timeout = service.timeout or DEFAULT_TIMEOUT
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=min(CONNECT_TIMEOUT, read_timeout), sock_read=read_timeout
    )
    try:
        resp = await session.request(
            prepared.method,
            engine.forward_url(service, prepared),
            data=prepared.body or None,
            headers=prepared.headers,
            timeout=timeout,
            allow_redirects=False,
        )
    except TimeoutError:
        raise OpenAIError(
            504,
            f"service {service.name!r} did not answer within {read_timeout:g}s",
            "timeout_error",
            "engine_timeout",
        ) from None
    except aiohttp.ClientError as exc:
        service_failed(state)
        raise OpenAIError(
            502,
            f"service {service.name!r} ({service.engine}) is unreachable: {describe(exc)}",
            "server_error",
            "engine_unreachable",
        ) from None
    try:
        if resp.status >= 400:
            await _relay_error(handler, state, resp)
        else:
            await _relay(handler, state, prepared, resp)
    except StreamClosedError:
        log.info("hub disconnected from a response of service %s", service.name)
    finally:
        if resp.content.at_eof():
            resp.release()
        else:
            resp.close()


async def _relay_error(
    handler: tornado.web.RequestHandler, state: ServiceState, resp: aiohttp.ClientResponse
) -> None:
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
    handler.set_status(resp.status)
    if "Retry-After" in resp.headers:
        handler.set_header("Retry-After", resp.headers["Retry-After"])
    handler.set_header("Content-Type", "application/json")
    handler.finish(json.dumps(error))


async def _relay(
    handler: tornado.web.RequestHandler,
    state: ServiceState,
    request: EngineRequest,
    resp: aiohttp.ClientResponse,
) -> None:
    headers = {h: resp.headers[h] for h in RELAYED_RESPONSE_HEADERS if h in resp.headers}
    out = state.engine.translate_response(
        state.service, request, EngineResponse(resp.status, headers, resp.content.iter_any())
    )
    handler.set_status(out.status)
    handler.clear_header("Content-Type")
    for name, value in out.headers.items():
        handler.set_header(name, value)
    # Tornado leaves Nagle's algorithm on until finish(): small streamed chunks would wait
    # for the hub's delayed ACKs.
    stream = getattr(handler.request.connection, "stream", None)
    if stream is not None:
        stream.set_nodelay(True)
    try:
        async for chunk in out.chunks:
            handler.write(chunk)
            await handler.flush()
    except (TimeoutError, aiohttp.ClientError) as exc:
        reason = describe(exc)
        log.warning("service %s failed mid-response: %s", state.name, reason)
        if not out.headers.get("Content-Type", "").startswith("text/event-stream"):
            # No way to signal an error inside an arbitrary body: cut the connection so the
            # hub sees a truncated response rather than a complete-looking one.
            handler.request.connection.close()  # type: ignore[union-attr]
            return
        error = error_body(
            f"service {state.name!r} failed mid-stream: {reason}",
            "server_error",
            code="engine_stream_error",
        )
        handler.write(b"data: " + json.dumps(error).encode() + b"\n\n")
    handler.finish()
