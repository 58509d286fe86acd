"""The streaming relay between a client and an agent.

- Server-sent events are relayed event by event as they arrive and flushed at once; only a
  partial event is held back until its end arrives.
- Other streaming bodies (audio) are relayed chunk by chunk; JSON bodies are read whole so
  usage can be recorded and errors normalised to OpenAI's shape.
- Timeouts: connect, first byte (until response headers), and idle (between two chunks). A
  healthy stream has no total-time cap.
- The caller runs :meth:`Relay.forward` in a task and cancels it when the client disconnects;
  cancelling closes the agent connection at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from tornado.iostream import StreamClosedError

from inferclub.hub.store import RequestRecord
from inferclub.openai_errors import OpenAIError, normalise_error_body
from inferclub.wire import HEADER_PREFIX

log = logging.getLogger(__name__)

MAX_JSON_RESPONSE = 256 * 1024 * 1024
_RELAYED_HEADERS = ("Content-Type", "Content-Disposition")


#: Rewrites a whole success body: ``(content type, body) -> (content type, body)``.
Transform = Callable[[str, bytes], tuple[str, bytes]]


class Sink(Protocol):
    """What the relay writes to: the client's response (a Tornado handler)."""

    def set_status(self, status_code: int, reason: str | None = None) -> None: ...
    def set_header(self, name: str, value: Any) -> None: ...
    def write(self, chunk: bytes) -> None: ...
    def flush(self) -> asyncio.Future[None]: ...


@dataclass(frozen=True)
class Timeouts:
    connect: float
    first_byte: float
    idle: float


class Relay:
    def __init__(self, timeouts: Timeouts) -> None:
        self.timeouts = timeouts
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # Keep agent connections warm for a minute: a burst of requests then skips the
        # connection set-up (a round trip or more to a remote agent).
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60, keepalive_timeout=60)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=self.timeouts.connect, sock_connect=self.timeouts.connect
            ),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def probe(self, callback_url: str, token: str, timeout: float = 3.0) -> str | None:
        """Can the hub reach an agent? None if any HTTP answer came back, else why not."""
        assert self._session is not None, "relay not started"
        try:
            async with asyncio.timeout(timeout):
                async with self._session.get(
                    callback_url.rstrip("/") + "/models",
                    headers={"Authorization": f"Bearer {token}"},
                    allow_redirects=False,
                ) as resp:
                    await resp.read()
        except TimeoutError:
            return f"no answer within {timeout:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    async def forward(
        self,
        sink: Sink,
        url: str,
        body: bytes,
        headers: dict[str, str],
        record: RequestRecord,
        strip_usage: bool = False,
        transform: Transform | None = None,
    ) -> None:
        """Send ``body`` to ``url`` and relay the answer into ``sink``. Fills ``record``."""
        assert self._session is not None, "relay not started"
        # perf_counter, like the handler's duration: uvloop's loop.time() ticks in whole ms.
        t0 = time.perf_counter()
        started = False
        resp: aiohttp.ClientResponse | None = None
        try:
            try:
                async with asyncio.timeout(self.timeouts.first_byte):
                    resp = await self._session.post(
                        url, data=body, headers=headers, allow_redirects=False
                    )
            except (aiohttp.ServerTimeoutError, aiohttp.ConnectionTimeoutError):
                raise OpenAIError(
                    504,
                    f"Could not connect to the provider within {self.timeouts.connect:g} s.",
                    "server_error",
                    "upstream_timeout",
                ) from None
            except TimeoutError:
                raise OpenAIError(
                    504,
                    f"The provider did not answer within {self.timeouts.first_byte:g} s.",
                    "server_error",
                    "upstream_timeout",
                ) from None
            except (aiohttp.ClientError, OSError) as exc:
                raise OpenAIError(
                    502,
                    f"The provider's agent is unreachable ({type(exc).__name__}).",
                    "server_error",
                    "upstream_unreachable",
                ) from None
            record.ttfb_ms = (time.perf_counter() - t0) * 1000
            ctype = resp.headers.get("Content-Type", "")
            if (
                resp.status >= 400
                or ctype.startswith("application/json")
                or resp.status in (204, 304)
            ):
                await self._relay_whole(sink, resp, record, transform)
            else:
                started = True
                for name in _RELAYED_HEADERS:
                    if name in resp.headers:
                        sink.set_header(name, resp.headers[name])
                for name, value in resp.headers.items():
                    if name.lower().startswith(HEADER_PREFIX):
                        sink.set_header(name, value)
                sink.set_status(resp.status)
                sink.start_stream()
                if ctype.startswith("text/event-stream"):
                    sink.set_header("Cache-Control", "no-cache")
                    sink.set_header("X-Accel-Buffering", "no")
                    await self._relay_sse(sink, resp, record, strip_usage)
                else:
                    await self._relay_raw(sink, resp, record)
        except OpenAIError as err:
            if not started:
                raise
            await self._stream_error(sink, record, err)
        except TimeoutError:
            await self._stream_error(
                sink,
                record,
                OpenAIError(
                    504,
                    f"The provider sent nothing for {self.timeouts.idle:g} s; the stream was closed.",
                    "server_error",
                    "upstream_timeout",
                ),
            )
        except (aiohttp.ClientError, OSError) as exc:
            err = OpenAIError(
                502,
                f"The connection to the provider broke ({type(exc).__name__}).",
                "server_error",
                "upstream_error",
            )
            if not started:
                raise err from None
            await self._stream_error(sink, record, err)
        finally:
            if resp is not None:
                resp.close()

    async def _relay_whole(
        self,
        sink: Sink,
        resp: aiohttp.ClientResponse,
        record: RequestRecord,
        transform: Transform | None = None,
    ) -> None:
        parts: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.timeouts.idle) as deadline:
            async for chunk in resp.content.iter_any():
                deadline.reschedule(loop.time() + self.timeouts.idle)
                size += len(chunk)
                if size > MAX_JSON_RESPONSE:
                    raise OpenAIError(502, "The provider's response is too large.", "server_error")
                parts.append(chunk)
        body = b"".join(parts)
        if resp.status >= 400:
            shaped = normalise_error_body(resp.status, body, resp.headers.get("Content-Type", ""))
            record.error_type = shaped["error"]["type"]
            body = json.dumps(shaped).encode()
            sink.set_header("Content-Type", "application/json")
        else:
            ctype = resp.headers.get("Content-Type", "application/json")
            if ctype.startswith("application/json") and _has_metrics(body, record):
                try:
                    _take_usage(json.loads(body), record)
                except ValueError:
                    pass
            if transform is not None:
                ctype, body = transform(ctype, body)
            sink.set_header("Content-Type", ctype)
        for name, value in resp.headers.items():
            if name.lower().startswith(HEADER_PREFIX):
                sink.set_header(name, value)
        sink.set_status(resp.status)
        record.status = resp.status
        record.bytes_out += len(body)
        sink.write(body)

    async def _relay_sse(
        self, sink: Sink, resp: aiohttp.ClientResponse, record: RequestRecord, strip_usage: bool
    ) -> None:
        record.status = resp.status
        loop = asyncio.get_running_loop()
        idle = self.timeouts.idle
        pending = b""
        async with asyncio.timeout(idle) as deadline:
            async for chunk in resp.content.iter_any():
                deadline.reschedule(loop.time() + idle)
                data = pending + chunk if pending else chunk
                cut = max(data.rfind(b"\n\n") + 2, data.rfind(b"\r\n\r\n") + 4)
                if cut < 2:
                    pending = data
                    continue
                out, pending = data[:cut], data[cut:]
                if b'"usage"' in out:
                    out = _scan_usage(out, record, strip_usage)
                if out:
                    record.bytes_out += len(out)
                    sink.write(out)
                    await sink.flush()
        if pending:
            record.bytes_out += len(pending)
            sink.write(pending)

    async def _relay_raw(
        self, sink: Sink, resp: aiohttp.ClientResponse, record: RequestRecord
    ) -> None:
        record.status = resp.status
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.timeouts.idle) as deadline:
            async for chunk in resp.content.iter_any():
                deadline.reschedule(loop.time() + self.timeouts.idle)
                record.bytes_out += len(chunk)
                sink.write(chunk)
                await sink.flush()

    async def _stream_error(self, sink: Sink, record: RequestRecord, err: OpenAIError) -> None:
        """An error after the first byte: a final SSE ``data: {"error": ...}`` event."""
        record.error_type = err.type
        log.warning("stream %s ended with an error: %s", record.id, err.message)
        payload = b"data: " + json.dumps(err.body()).encode() + b"\n\n"
        record.bytes_out += len(payload)
        sink.write(payload)
        try:
            await sink.flush()
        except StreamClosedError:
            log.debug("client of %s left before the error event", record.id)


def _has_metrics(body: bytes, record: RequestRecord) -> bool:
    """Whether parsing ``body`` can tell usage: skip the parse when it cannot."""
    if record.type == "image":
        return True
    return b'"usage"' in body or (record.type == "stt" and b'"duration"' in body)


def _take_usage(obj: Any, record: RequestRecord) -> bool:
    if not isinstance(obj, dict):
        return False
    if record.type == "image" and isinstance(obj.get("data"), list):
        record.images = len(obj["data"])
    duration = obj.get("duration")
    if record.type == "stt" and duration is not None:
        try:
            record.audio_seconds = float(duration)  # vLLM sends it as a string
        except (TypeError, ValueError):
            pass
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        return False
    for field, attr in (
        ("prompt_tokens", "prompt_tokens"),
        ("input_tokens", "prompt_tokens"),
        ("completion_tokens", "completion_tokens"),
        ("output_tokens", "completion_tokens"),
    ):
        value = usage.get(field)
        if isinstance(value, int) and not isinstance(value, bool):
            setattr(record, attr, value)
    if usage.get("type") == "duration" and isinstance(usage.get("seconds"), (int, float)):
        record.audio_seconds = float(usage["seconds"])
    return True


def _scan_usage(events: bytes, record: RequestRecord, strip: bool) -> bytes:
    """Record usage from complete SSE events; drop usage-only events the client didn't ask for."""
    kept = []
    for event in events.replace(b"\r\n", b"\n").split(b"\n\n"):
        if not event:
            continue
        if b'"usage"' in event:
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    try:
                        obj = json.loads(line[5:])
                    except ValueError:
                        continue
                    if _take_usage(obj, record) and strip and obj.get("choices") == []:
                        event = b""
            if not event:
                continue
        kept.append(event + b"\n\n")
    return b"".join(kept)
