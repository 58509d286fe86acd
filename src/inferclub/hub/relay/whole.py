"""Answers read whole before they are sent: JSON bodies (so usage can be recorded and a
transform applied), empty bodies, and every error, normalised to OpenAI's shape.

A JSON answer larger than :data:`MAX_WHOLE_BODY` is not held: what was read goes out and the
rest is relayed chunk by chunk, like any streamed body (its usage is then not recorded)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from contextlib import suppress

import aiohttp

from inferclub.hub import jsonbody
from inferclub.hub.relay.connect import UpstreamResponse, upstream_broke, upstream_idle
from inferclub.hub.relay.meter import RequestMeter
from inferclub.hub.relay.stream import Sink, relay_headers, relay_stream
from inferclub.openai_errors import OpenAIError, normalise_error_body

#: The most of an answer held in memory. A success past it is streamed on; an error or an
#: answer to rewrite (``transform``) past it is a 502: neither is that large when healthy.
MAX_WHOLE_BODY = 32 * 1024 * 1024

#: The longest ``Retry-After`` relayed from an agent, in seconds.
MAX_RETRY_AFTER = 300

#: Rewrites a whole success body: ``(content type, body) -> (content type, body)``.
Transform = Callable[[str, bytes], tuple[str, bytes]]


def is_whole(resp: UpstreamResponse) -> bool:
    """Whether an answer is read whole rather than streamed."""
    return (
        resp.status >= 400
        or resp.headers.get("Content-Type", "").startswith("application/json")
        or resp.status in (204, 304)
    )


async def relay_whole(
    sink: Sink,
    resp: UpstreamResponse,
    meter: RequestMeter,
    idle: float,
    transform: Transform | None = None,
) -> None:
    """Read the answer, record it, and write it to ``sink`` in one piece. Nothing has been sent
    when this raises, so its :class:`OpenAIError` becomes the client's error response."""
    if resp.status < 400 and transform is None and (resp.content_length or 0) > MAX_WHOLE_BODY:
        await relay_stream(sink, resp, meter, idle, strip_usage=False)  # announced too large
        return
    parts, whole = await read_body(resp, idle)
    if not whole:
        if resp.status >= 400 or transform is not None:
            raise OpenAIError(502, "The provider's response is too large.", "server_error")
        await relay_stream(sink, resp, meter, idle, strip_usage=False, head=parts)
        return
    body = b"".join(parts)
    if resp.status >= 400:
        shaped = normalise_error_body(resp.status, body, resp.headers.get("Content-Type", ""))
        meter.failed(resp.status, shaped["error"]["type"], shaped["error"]["code"])
        body = json.dumps(shaped).encode()
        sink.set_header("Content-Type", "application/json")
        if resp.status in (429, 503):
            sink.set_header("Retry-After", retry_after(resp.headers.get("Retry-After")))
    else:
        ctype = resp.headers.get("Content-Type", "application/json")
        if ctype.startswith("application/json") and has_metrics(body, meter.type):
            # Not JSON after all, or JSON the hub does not decode (nested too deep, millions
            # of arrays: seconds of the event loop, every user's): relayed as it is, no usage.
            with suppress(ValueError):
                jsonbody.check_shape(body)
                meter.usage(json.loads(body))
        if transform is not None:
            ctype, body = transform(ctype, body)
        sink.set_header("Content-Type", ctype)
    relay_headers(sink, resp)
    sink.set_status(resp.status)
    meter.answered(resp.status)
    meter.sent(len(body))
    if body:  # even an empty write is a body to Tornado, refused on a 204 or 304
        sink.write(body)


def retry_after(value: str | None) -> str:
    """The ``Retry-After`` of a relayed 429 or 503: the engine's delay in seconds when it sent
    one (capped: an agent must not park clients for a day), else 1. An HTTP date is not
    relayed: the engine's clock is not the client's."""
    if value is not None and value.strip().isdigit():
        return str(min(int(value), MAX_RETRY_AFTER))
    return "1"


async def read_body(resp: UpstreamResponse, idle: float) -> tuple[list[bytes], bool]:
    """The answer's first chunks, up to about :data:`MAX_WHOLE_BODY` bytes, and whether they
    are all of it."""
    content = resp.content
    if isinstance(content, aiohttp.StreamReader) and content.is_eof():
        # The whole answer came with its headers (most JSON answers do): taken as it is,
        # without a timer or the iteration that waits for more.
        try:
            body = content.read_nowait()
        except (aiohttp.ClientError, OSError) as exc:
            raise upstream_broke(exc) from None
        return [body], len(body) <= MAX_WHOLE_BODY
    parts: list[bytes] = []
    size = 0
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(idle) as deadline:
            async for chunk in resp.content.iter_any():
                deadline.reschedule(loop.time() + idle)
                size += len(chunk)
                parts.append(chunk)
                if size > MAX_WHOLE_BODY:
                    return parts, False
    except TimeoutError:
        raise upstream_idle(idle) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise upstream_broke(exc) from None
    return parts, True


def has_metrics(body: bytes, service_type: str | None) -> bool:
    """Whether parsing ``body`` can tell usage: skip the parse when it cannot."""
    if service_type == "image":
        return True
    return b'"usage"' in body or (service_type == "stt" and b'"duration"' in body)
