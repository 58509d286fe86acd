"""A minimal, fast OpenAI-compatible upstream for the hub benchmark (``bench/overhead.py``).

It runs as its own process so it shares no core or GIL with the load generator or the hub.
To keep its own cost small it is a bare :class:`asyncio.Protocol` speaking just enough
HTTP/1.1 (keep-alive, ``Content-Length`` request bodies, chunked streaming responses):

- ``POST /v1/chat/completions`` without ``"stream": true``: a small ``chat.completion`` JSON
  body with ``usage``.
- With ``"stream": true``: ``bench_chunks`` (default 20) ``chat.completion.chunk`` events,
  then, as OpenAI does, a usage-only chunk when ``stream_options.include_usage`` is set,
  then ``data: [DONE]``. Each event is its own write, and each content chunk carries
  ``"bench_sent"``: its send time on ``time.monotonic()`` (the clock is system-wide, so the
  benchmark measures each chunk's transit time). ``bench_delay`` (seconds, default 0)
  schedules event *i* at ``start + i * bench_delay`` (an absolute schedule, so sleep
  jitter does not accumulate).
- ``GET /v1/models`` and ``GET /health`` for checks.

Usage: ``python bench/fake_upstream.py [--host 127.0.0.1] [--port 0]``; it prints
``listening on http://H:P`` and exits on SIGTERM/SIGINT (and, with ``--exit-on-stdin-eof``,
when its stdin closes, so it never outlives the benchmark that started it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from typing import Any

MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
CONTENT = "Hello from the bench upstream."
USAGE = {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    411: "Length Required",
    413: "Payload Too Large",
}


def _response(
    status: int, body: bytes, keep_alive: bool, ctype: bytes = b"application/json"
) -> bytes:
    head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n" % (
        status,
        _REASONS[status].encode(),
        ctype,
        len(body),
        b"" if keep_alive else b"Connection: close\r\n",
    )
    return head + body


def _error(status: int, message: str, keep_alive: bool) -> bytes:
    body = json.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
    ).encode()
    return _response(status, body, keep_alive)


def _frame(event: bytes) -> bytes:
    """One SSE event as one HTTP chunk."""
    return b"%x\r\n%s\r\n" % (len(event), event)


class _Bodies:
    """Pre-encoded answers per model (the bench uses one model, so this is a tiny cache)."""

    def __init__(self) -> None:
        self._completion: dict[str, bytes] = {}
        self._chunks: dict[tuple[str, int], list[bytes]] = {}
        self._usage: dict[str, bytes] = {}

    def completion(self, model: str) -> bytes:
        body = self._completion.get(model)
        if body is None:
            body = json.dumps(
                {
                    "id": "chatcmpl-bench",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": CONTENT},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": USAGE,
                },
                separators=(",", ":"),
            ).encode()
            if len(self._completion) < 64:
                self._completion[model] = body
        return body

    def chunks(self, model: str, n: int) -> list[bytes]:
        """Each event's JSON minus its closing ``}``: the sender appends ``bench_sent``."""
        events = self._chunks.get((model, n))
        if events is None:
            events = []
            for i in range(n):
                delta: dict[str, Any] = {"content": f"tok{i} "}
                if i == 0:
                    delta["role"] = "assistant"
                event = {
                    "id": "chatcmpl-bench",
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "delta": delta,
                            "finish_reason": "stop" if i == n - 1 else None,
                        }
                    ],
                }
                events.append(
                    b"data: "
                    + json.dumps(event, separators=(",", ":")).encode()[:-1]
                    + b',"bench_sent":'
                )
            if len(self._chunks) < 64:
                self._chunks[(model, n)] = events
        return events

    def usage(self, model: str) -> bytes:
        frame = self._usage.get(model)
        if frame is None:
            event = {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [],
                "usage": USAGE,
            }
            frame = _frame(b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n")
            if len(self._usage) < 64:
                self._usage[model] = frame
        return frame


BODIES = _Bodies()
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
DONE = _frame(b"data: [DONE]\n\n") + b"0\r\n\r\n"
MODELS = json.dumps(
    {
        "object": "list",
        "data": [{"id": "bench-model", "object": "model", "created": 0, "owned_by": "bench"}],
    }
).encode()


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.streaming: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, so no isinstance check.
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.streaming is not None:
            self.streaming.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.streaming is None:
            self._process()

    def _process(self) -> None:
        """Answer every complete request in the buffer (in order; a stream blocks the rest)."""
        while self.transport is not None and self.streaming is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self._close()
                return
            lines = bytes(self.buf[:end]).split(b"\r\n")
            try:
                method, target, version = lines[0].split(b" ", 2)
            except ValueError:
                self._close()
                return
            length, chunked, conn = _head_fields(lines[1:])
            keep_alive = conn != b"close" if version == b"HTTP/1.1" else conn == b"keep-alive"
            if chunked:
                self._send(_error(411, "chunked request bodies are not supported", False))
                self._close()
                return
            if length > MAX_BODY:
                self._send(_error(413, "body too large", False))
                self._close()
                return
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            self._handle(method, target.split(b"?", 1)[0], body, keep_alive)
            if not keep_alive and self.streaming is None:
                self._close()

    def _handle(self, method: bytes, path: bytes, body: bytes, keep_alive: bool) -> None:
        if method == b"POST" and path.endswith(b"/chat/completions"):
            try:
                req = json.loads(body)
            except ValueError as exc:
                self._send(_error(400, f"bad JSON: {exc}", keep_alive))
                return
            if not isinstance(req, dict):
                self._send(_error(400, "the body must be a JSON object", keep_alive))
                return
            model = str(req.get("model") or "bench-model")
            if req.get("stream") is True:
                opts = req.get("stream_options")
                usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
                n = max(1, min(int(req.get("bench_chunks") or 20), 100_000))
                delay = max(0.0, min(float(req.get("bench_delay") or 0.0), 60.0))
                self.streaming = asyncio.ensure_future(
                    self._stream(model, n, delay, usage, keep_alive)
                )
            else:
                self._send(_response(200, BODIES.completion(model), keep_alive))
        elif method == b"GET" and path.endswith(b"/models"):
            self._send(_response(200, MODELS, keep_alive))
        elif method == b"GET" and path == b"/health":
            self._send(_response(200, b'{"status":"ok"}', keep_alive))
        else:
            self._send(_error(404, f"no route {path.decode('latin-1')}", keep_alive))

    async def _stream(
        self, model: str, n: int, delay: float, usage: bool, keep_alive: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            events = BODIES.chunks(model, n)
            self._send(SSE_HEAD)
            start = loop.time()
            for i, event in enumerate(events):
                if delay:
                    wait = start + i * delay - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                elif i:
                    # A token generator yields between tokens: each event is its own send.
                    await asyncio.sleep(0)
                if self.transport is None:
                    return
                # The send time on the system-wide monotonic clock, so the client can tell
                # how long the chunk took to reach it (same machine, same clock).
                self._send(_frame(b"%s%.6f}\n\n" % (event, time.monotonic())))
            if usage:
                self._send(BODIES.usage(model))
            self._send(DONE)
        finally:
            self.streaming = None
        if not keep_alive:
            self._close()
        elif self.buf:
            self._process()

    def _send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


async def serve(host: str, port: int, watch_stdin: bool = False) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamProtocol, host, port, backlog=1024)
    bound = server.sockets[0].getsockname()
    print(f"listening on http://{bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if watch_stdin:
        # Exit when the parent goes away: its end of our stdin pipe closes.
        def on_stdin() -> None:
            if not sys.stdin.buffer.read1(4096):
                stop.set()

        loop.add_reader(sys.stdin.fileno(), on_stdin)
    await stop.wait()
    server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="stop when stdin closes (the benchmark passes a pipe)",
    )
    args = parser.parse_args()
    try:
        import uvloop  # type: ignore[import-not-found]  # optional, never a dependency
    except ImportError:
        asyncio.run(serve(args.host, args.port, args.exit_on_stdin_eof))
    else:
        uvloop.run(serve(args.host, args.port, args.exit_on_stdin_eof))
    return 0


def _head_fields(lines: list[bytes]) -> tuple[int, bool, bytes]:
    """Content-Length, whether the body is chunked, and the Connection header of a request."""
    length, chunked, conn = 0, False, b""
    for line in lines:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip() or b"0")
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            conn = value.strip().lower()
    return length, chunked, conn


if __name__ == "__main__":
    raise SystemExit(main())
