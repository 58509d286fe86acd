"""A cheap HTTP/1.1 load generator for the benchmarks: raw keep-alive connections, requests as
pre-built bytes.

On a 2-core machine the load generator shares the cores with the hub it measures. An aiohttp
client spends about as much CPU per request as the hub does, so it would measure itself; this
one writes pre-encoded request bytes and parses only the status line and ``Content-Length`` of
each answer (the hub sends no chunked bodies for the requests used here), which costs a few
tens of microseconds per request on uvloop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

#: The request to send next: (raw request bytes), or None when the worker should stop.
NextRequest = Callable[[], bytes | None]


def request_bytes(
    method: str, path: str, body: bytes, headers: dict[str, str] | None = None
) -> bytes:
    """One HTTP/1.1 keep-alive request, ready to write."""
    lines = [f"{method} {path} HTTP/1.1", "Host: bench"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    lines += ["Content-Type: application/json", f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


@dataclass
class Results:
    latencies: list[float] = field(default_factory=list)
    errors: dict[int, int] = field(default_factory=dict)
    #: the first error body seen, to say why
    first_error: bytes = b""

    def add(self, status: int, body: bytes, latency: float) -> None:
        if status == 200:
            self.latencies.append(latency)
            return
        self.errors[status] = self.errors.get(status, 0) + 1
        self.first_error = self.first_error or body[:300]


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


async def worker(
    url: str, next_request: NextRequest, results: Results, every: float | None = None
) -> None:
    """One keep-alive connection sending requests until ``next_request`` says stop; with
    ``every``, one request per ``every`` seconds at most (on a fixed schedule, so a late
    answer is caught up on instead of lowering the rate)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    due = time.perf_counter()
    try:
        while (raw := next_request()) is not None:
            if every is not None:
                due += every
                if (wait := due - time.perf_counter()) > 0:
                    await asyncio.sleep(wait)
            start = time.perf_counter()
            writer.write(raw)
            status, body = await _answer(reader)
            results.add(status, body, time.perf_counter() - start)
    finally:
        writer.close()


async def run(
    url: str,
    next_request: NextRequest,
    concurrency: int,
    rate: float | None = None,
    results: Results | None = None,
) -> Results:
    """``concurrency`` connections sending what ``next_request`` returns until it says stop,
    as fast as answers come or, with ``rate``, at most ``rate`` requests/s in all. Pass
    ``results`` to watch them grow while it runs."""
    results = Results() if results is None else results
    every = None if rate is None else concurrency / rate
    await asyncio.gather(*(worker(url, next_request, results, every) for _ in range(concurrency)))
    return results


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]
