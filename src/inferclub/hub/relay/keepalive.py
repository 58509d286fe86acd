"""Streams that wait: a streamed request still waiting for its first byte after
``stream_keepalive`` seconds gets its ``200`` and SSE comment lines (``: keepalive``) every
few seconds, so that proxies and SDKs with read timeouts do not give up while a model loads.

From that moment the status is sent: the hub no longer fails over to another provider, and
an error arrives as the stream's final ``data: {"error": ...}`` event.
"""

from __future__ import annotations

import asyncio

from inferclub.hub.relay.meter import RequestMeter
from inferclub.hub.relay.stream import Sink

#: Seconds between two keep-alive comments at most.
EVERY = 5.0
COMMENT = b": keepalive\n\n"


class KeepAlive:
    """Runs beside a streamed request's attempts until :meth:`stop`; ``committed`` once it
    sent the 200. ``after`` 0 turns it off."""

    def __init__(self, sink: Sink, meter: RequestMeter, after: float) -> None:
        self.sink = sink
        self.meter = meter
        self.after = after
        self.committed = False
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        # A timer, not a sleeping task: most streams begin long before it fires, and a timer
        # costs a fraction of a task to set up and cancel, on every streamed request.
        if self.after > 0:
            self._timer = asyncio.get_running_loop().call_later(self.after, self._begin)

    def _begin(self) -> None:
        self._timer = None
        self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        """No more comments: the answer (or its error) follows. Not awaited on purpose: the
        answer is relayed without yielding to the loop first, or aiohttp may see an agent's
        stream end broken before the events it sent are read (it raises before it returns
        buffered data), and the client would lose them."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()

    async def _run(self) -> None:
        sink = self.sink
        sink.set_status(200)
        sink.set_header("Content-Type", "text/event-stream")
        sink.set_header("Cache-Control", "no-cache")
        sink.set_header("X-Accel-Buffering", "no")
        sink.start_stream()
        self.committed = True
        self.meter.answered(200)
        while True:
            sink.write(COMMENT)
            await sink.flush()
            await asyncio.sleep(min(EVERY, self.after))
