"""Streamed answers, relayed as they arrive with no buffering.

- Server-sent events go out event by event, each flushed at once; only a partial event is held
  back until its end arrives, so usage and error events are always seen whole.
- Other streaming bodies (audio) go out chunk by chunk.
- Between two chunks the agent has ``idle`` seconds; a healthy stream has no total-time cap.
- An error after the first byte cannot change the status the client already has: the client
  gets a final ``data: {"error": ...}`` event, and the meter records the failure.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any, Protocol

import aiohttp
from tornado.iostream import StreamClosedError

from inferclub.hub.relay.connect import UpstreamResponse, upstream_broke, upstream_idle
from inferclub.hub.relay.meter import RequestMeter
from inferclub.openai_errors import OpenAIError
from inferclub.wire import DOWNGRADED_HEADER, HEADER_PREFIX

log = logging.getLogger(__name__)

RELAYED_HEADERS = ("Content-Type", "Content-Disposition")
#: An upstream error event mid-stream: the agent or engine broke after the first byte.
BROKEN_STREAM = 502

#: One SSE event with the blank line that ends it (a lazy match finds the first blank line).
#: The most of one unfinished SSE event held back to be scanned whole. An agent that never
#: ends its event (no blank line) made the hub hold, and re-copy, everything it sent: a GiB
#: and a busy core for one request. Past this the bytes go out unscanned.
MAX_PENDING_EVENT = 1024 * 1024

_EVENT = re.compile(rb".*?(?:\r\n\r\n|\n\n)", re.DOTALL)


class Sink(Protocol):
    """What the relay writes to: the client's response (a Tornado handler)."""

    def set_status(self, status_code: int, reason: str | None = None) -> None: ...
    def set_header(self, name: str, value: Any) -> None: ...
    def write(self, chunk: bytes) -> None: ...
    def flush(self) -> asyncio.Future[None]: ...

    def start_stream(self) -> None:
        """The body is about to be streamed: send each flush at once (no Nagle delay)."""


#: The only ``X-InferClub-*`` header an agent may send on to the client. The others are the
#: hub's to set: an agent that sent ``X-InferClub-Provider`` would make the playground show
#: another provider as the one that answered.
AGENT_HEADERS = frozenset({DOWNGRADED_HEADER.lower()})


def relay_headers(sink: Sink, resp: UpstreamResponse) -> None:
    """The agent's ``X-InferClub-Downgraded`` header; its other ``X-InferClub-*`` are dropped."""
    for name, value in resp.headers.items():
        lower = name.lower()
        if lower.startswith(HEADER_PREFIX) and lower in AGENT_HEADERS:
            sink.set_header(name, value)


async def relay_stream(
    sink: Sink,
    resp: UpstreamResponse,
    meter: RequestMeter,
    idle: float,
    strip_usage: bool,
    head: list[bytes] | None = None,
) -> None:
    """Relay a streamed success body, after ``head`` (chunks of it already read, of a body
    that is not an event stream; emptied as they go out). A closed client connection raises
    :class:`~tornado.iostream.StreamClosedError` for the caller to record."""
    for name in RELAYED_HEADERS:
        if name in resp.headers:
            sink.set_header(name, resp.headers[name])
    relay_headers(sink, resp)
    sink.set_status(resp.status)
    meter.answered(resp.status)
    sink.start_stream()
    try:
        if resp.headers.get("Content-Type", "").startswith("text/event-stream"):
            sink.set_header("Cache-Control", "no-cache")
            sink.set_header("X-Accel-Buffering", "no")
            await relay_sse(sink, resp, meter, idle, strip_usage)
        else:
            await relay_raw(sink, resp, meter, idle, head)
    except StreamClosedError:
        raise  # an OSError too, but the client's side: not the provider's fault
    except TimeoutError:
        await stream_error(sink, meter, upstream_idle(idle))
    except (aiohttp.ClientError, OSError) as exc:
        await stream_error(sink, meter, upstream_broke(exc))


async def relay_sse(
    sink: Sink, resp: UpstreamResponse, meter: RequestMeter, idle: float, strip_usage: bool
) -> None:
    loop = asyncio.get_running_loop()
    pending = b""
    async with asyncio.timeout(idle) as deadline:
        async for chunk in resp.content.iter_any():
            deadline.reschedule(loop.time() + idle)
            out, pending = cut_events(pending + chunk if pending else chunk)
            if b'"usage"' in out or b'"error"' in out:
                out = scan_events(out, meter, strip_usage)
            if len(pending) > MAX_PENDING_EVENT:
                out, pending = out + pending, b""
            if out:
                meter.sent(len(out))
                sink.write(out)
                await sink.flush()
    if pending:
        meter.sent(len(pending))
        sink.write(pending)


async def relay_raw(
    sink: Sink,
    resp: UpstreamResponse,
    meter: RequestMeter,
    idle: float,
    head: list[bytes] | None = None,
) -> None:
    # Emptied as it goes out, so a large answer's first part is not held while the rest flows.
    while head:
        chunk = head.pop(0)
        meter.sent(len(chunk))
        sink.write(chunk)
        await sink.flush()
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(idle) as deadline:
        async for chunk in resp.content.iter_any():
            deadline.reschedule(loop.time() + idle)
            meter.sent(len(chunk))
            sink.write(chunk)
            await sink.flush()


async def stream_error(sink: Sink, meter: RequestMeter, err: OpenAIError) -> None:
    """An error after the first byte: recorded, and a final SSE ``data: {"error": ...}`` event."""
    meter.failed(err.status, err.type, err.code)
    log.warning("stream %s ended with an error: %s", meter.id, err.message)
    payload = b"data: " + json.dumps(err.body()).encode() + b"\n\n"
    meter.sent(len(payload))
    sink.write(payload)
    try:
        await sink.flush()
    except StreamClosedError:
        log.debug("client of %s left before the error event", meter.id)


def cut_events(data: bytes) -> tuple[bytes, bytes]:
    """``data`` split after its last complete event: ``(complete events, the rest)``."""
    lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
    cut = max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
    return data[:cut], data[cut:]


def _event_end_before(data: bytes, pos: int) -> int:
    """Where the last complete event of ``data`` before ``pos`` ends (0 if none does)."""
    lf, crlf = data.rfind(b"\n\n", 0, pos), data.rfind(b"\r\n\r\n", 0, pos)
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def scan_events(events: bytes, meter: RequestMeter, strip_usage: bool) -> bytes:
    """Complete events, as they go to the client: usage and upstream errors recorded, and
    usage-only events dropped when the hub (not the client) asked for them. Kept events
    keep their bytes.

    Only the events from the first that mentions ``"usage"`` or ``"error"`` on are split and
    parsed: the ones before it go out as they are. A stream read in one piece (a fast engine,
    a busy hub) otherwise had its every event matched by the regular expression, byte by
    byte, for the usage in its last one."""
    marks = [i for i in (events.find(b'"usage"'), events.find(b'"error"')) if i >= 0]
    start = _event_end_before(events, min(marks)) if marks else len(events)
    if start:
        return events[:start] + _scan(events[start:], meter, strip_usage)
    return _scan(events, meter, strip_usage)


def _scan(events: bytes, meter: RequestMeter, strip_usage: bool) -> bytes:
    kept: list[bytes] = []
    end = 0
    for match in _EVENT.finditer(events):
        event, end = match.group(), match.end()
        if (b'"usage"' in event or b'"error"' in event) and _take_event(event, meter, strip_usage):
            continue
        kept.append(event)
    kept.append(events[end:])  # stray line ends after the last event
    return b"".join(kept)


def _take_event(event: bytes, meter: RequestMeter, strip_usage: bool) -> bool:
    """Record what one event tells; True to drop it (a usage-only chunk nobody asked for)."""
    drop = False
    for line in event.replace(b"\r\n", b"\n").split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        try:
            obj = json.loads(line[5:])
        except (ValueError, RecursionError):  # an agent's bytes: anything may come
            continue
        if not isinstance(obj, dict):
            continue
        # The openai SDK raises on any event whose `error` is truthy: so does the history.
        if error := obj.get("error"):
            _record_stream_error(meter, error)
        if meter.usage(obj) and strip_usage and obj.get("choices") == []:
            drop = True
    return drop


def _record_stream_error(meter: RequestMeter, error: Any) -> None:
    etype = error.get("type") if isinstance(error, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    meter.failed(
        BROKEN_STREAM,
        etype if isinstance(etype, str) and etype else "server_error",
        None if code is None else str(code),
    )
