"""Small HTTP servers for tests: a Tornado application on 127.0.0.1, port 0, in a thread.

Each server runs its own event loop in a daemon thread, so a synchronous test (and the agent
or hub subprocess it starts) can talk to it while the test blocks. Everything it sees is
recorded: requests (method, path, headers, raw body) and the moments a client went away in
the middle of a response. Subclass `FakeServer`, list `routes()`, and write handlers on
`FakeHandler`; a fake engine is a few lines of Tornado.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

import tornado.httpserver
import tornado.netutil
import tornado.web
from tornado.iostream import StreamClosedError

T = TypeVar("T")


class LoopThread:
    """An asyncio event loop running in a daemon thread."""

    def __init__(self, name: str = "fake") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro_fn: Callable[[], Coroutine[Any, Any, T]], timeout: float = 10) -> T:
        """Run ``coro_fn()`` in the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro_fn(), self.loop).result(timeout)

    def close(self) -> None:
        async def _cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(_cancel_all)
        finally:
            # Stop and close even when cancelling timed out, so no loop is left for the garbage
            # collector to find unclosed (a ResourceWarning, an error under pytest).
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(30)
            if not self.loop.is_running():
                self.loop.close()


@dataclass
class Recorded:
    """One request a fake received."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body)


class FakeServer:
    """Base class of fakes: ``with MyFake() as fake:`` serves ``routes()`` at ``fake.root``."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        #: `time.monotonic()` of each client disconnect seen while a response was in progress.
        self.disconnects: list[float] = []
        #: Streams that ran to the end.
        self.completed_streams = 0
        self.port = 0
        self._thread: LoopThread | None = None
        self._server: tornado.httpserver.HTTPServer | None = None

    def routes(self) -> list[Any]:
        """Tornado URL specs; handlers get ``fake=self`` (pass ``{"fake": self}``)."""
        raise NotImplementedError

    def start(self, port: int | None = None) -> Self:
        if self._thread is None:
            self._thread = LoopThread(type(self).__name__)
        wanted = self.port if port is None else port

        async def _start() -> int:
            app = tornado.web.Application(
                self.routes(),
                default_handler_class=NotFound,
                default_handler_args={"fake": self},
                log_function=lambda handler: None,  # tests read `requests`, not access logs
            )
            self._server = tornado.httpserver.HTTPServer(app)
            sockets = tornado.netutil.bind_sockets(wanted, "127.0.0.1")
            self._server.add_sockets(sockets)
            return int(sockets[0].getsockname()[1])

        self.port = self._thread.run(_start)
        return self

    def stop(self) -> None:
        """Stop listening and drop open connections (the engine is "down"); `start()` again
        brings it back on the same port."""
        server, self._server = self._server, None
        if server is None or self._thread is None:
            return

        async def _stop() -> None:
            server.stop()
            await server.close_all_connections()

        self._thread.run(_stop)

    def close(self) -> None:
        self.stop()
        if self._thread is not None:
            self._thread.close()
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The URL a manifest uses for this server (with /v1 when its API lives there)."""
        return f"{self.root}/v1"

    def seconds_until_disconnect(self, since: float, timeout: float = 5.0) -> float | None:
        """How long after ``since`` (a ``time.monotonic()``) this fake first saw a client
        leave mid-response; None if it did not within ``timeout``."""
        deadline = since + timeout
        while not self.disconnects and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.disconnects[0] - since if self.disconnects else None

    def posts(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == "POST" and r.path == path]


class FakeHandler(tornado.web.RequestHandler):
    """Records each request; the `stream_*` helpers note client disconnects."""

    def initialize(self, fake: FakeServer) -> None:
        self.fake = fake
        self.gone = False

    def prepare(self) -> None:
        self.fake.requests.append(
            Recorded(
                self.request.method or "",
                self.request.path,
                self.request.query,
                dict(self.request.headers),
                self.request.body,
            )
        )

    def check_xsrf_cookie(self) -> None:
        pass

    def on_connection_close(self) -> None:
        super().on_connection_close()
        if not self.gone:
            self.gone = True
            self.fake.disconnects.append(time.monotonic())

    def json_body(self) -> dict[str, Any]:
        try:
            data = json.loads(self.request.body or b"{}")
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def send_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))

    async def stream_events(
        self, events: list[Any], delay: float, first_delay: float = 0.0, done: bool = True
    ) -> None:
        """Send each event as `data: <json>` SSE, `delay` seconds apart, then `[DONE]`;
        stop if the client leaves."""
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        lines = [f"data: {json.dumps(e)}\n\n".encode() for e in events]
        if done:
            lines.append(b"data: [DONE]\n\n")
        await self.stream_bytes(lines, delay, first_delay)

    async def stream_bytes(
        self, chunks: list[bytes], delay: float, first_delay: float = 0.0
    ) -> None:
        if first_delay:
            await asyncio.sleep(first_delay)
        for i, chunk in enumerate(chunks):
            if self.gone:
                return
            try:
                self.write(chunk)
                await self.flush()
            except StreamClosedError:
                self.on_connection_close()
                return
            if delay and i < len(chunks) - 1:
                await asyncio.sleep(delay)
        if not self.gone:
            self.fake.completed_streams += 1
            self.finish()


class NotFound(FakeHandler):
    def prepare(self) -> None:
        super().prepare()
        self.set_status(404)
        self.set_header("Content-Type", "text/plain")
        self.finish("File Not Found")
