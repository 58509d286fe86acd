"""``run --tunnel``: the agent dials the hub and serves its requests over that one WebSocket.

Each stream the hub opens is replayed, as it came (signed method, path, headers and body), to
this agent's own callback server listening on loopback only: the signature check, the choice
of service, the concurrency limit, forwarding and cancellation are the callback path's code,
unchanged. The answer goes back in frames, only as fast as the hub grants window: an agent
whose client reads slowly stops reading from its engine.

The tunnel reconnects by itself, with exponential backoff and jitter; heartbeats go on it
(:meth:`TunnelClient.exchange`), so the heartbeat loop, its key pinning and its exit codes are
the HTTP path's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from inferclub import tunnel, wire
from inferclub.agent.heartbeat import Refused, TunnelDown
from inferclub.agent.metrics import AgentMetrics
from inferclub.agent.services import describe
from inferclub.openai_errors import OpenAIError, too_large
from inferclub.tunnel import Frame, FrameType, ProtocolError, ReceiveWindow, SendWindow

log = logging.getLogger("inferclub.agent.tunnel")

MAX_BACKOFF = 60.0
#: The close reason of an agent that stops (code 1001): the hub's log quotes it.
GOING_AWAY = b"agent shutting down"
#: A tunnel that stayed up this long starts its next backoff from the beginning.
STABLE_AFTER = 30.0
#: Seconds a heartbeat waits for the hub's reply on the tunnel.
REPLY_TIMEOUT = 30.0
#: Request headers not replayed to the loopback server (hop by hop, or set there anew).
HOP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
#: Response headers not sent back: hop by hop, or the loopback server's own.
HOP_RESPONSE_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "server", "date"}
)


def tunnel_url(hub: str) -> str:
    """``wss://`` for an https hub, ``ws://`` for http."""
    parts = urlsplit(hub.rstrip("/"))
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path + tunnel.TUNNEL_PATH, "", ""))


def backoff(failures: int) -> float:
    """Seconds before reconnect attempt ``failures`` (1, 2, 4, ... up to a minute), with
    jitter, so a hub that restarts is not hit by all its agents at one instant."""
    base: float = min(MAX_BACKOFF, 2.0 ** max(0, failures - 1))
    return base * random.uniform(0.5, 1.0)


def error_frame(stream_id: int, error: OpenAIError) -> bytes:
    """The ERROR frame that ends a stream: the error's status and OpenAI's error object."""
    return tunnel.encode_json(FrameType.ERROR, stream_id, {"status": error.status, **error.body()})


class AgentStream:
    """One request from the hub: its body as it arrives, then its answer from loopback."""

    def __init__(self, client: TunnelClient, frame: Frame) -> None:
        head = frame.json()
        method, path, headers = head.get("method"), head.get("path"), head.get("headers")
        if method not in ("GET", "POST") or not isinstance(path, str) or not path.startswith("/"):
            raise ProtocolError("OPEN frame needs a method (GET, POST) and a path")
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ProtocolError("OPEN frame headers must map strings to strings")
        self.client = client
        self.id = frame.stream
        self.method, self.path = method, path
        self.headers = {k: v for k, v in headers.items() if k.lower() not in HOP_HEADERS}
        self.body: list[bytes] = []
        self.size = 0
        self.receive_window = ReceiveWindow()
        self.send_window = SendWindow()
        self.task: asyncio.Task[None] | None = None

    def on_data(self, payload: bytes) -> None:
        if self.task is not None:
            raise ProtocolError(f"DATA on stream {self.id} after its END")
        self.receive_window.received(len(payload))
        self.size += len(payload)
        if self.size > self.client.max_body:
            # This request only: its stream ends with a 413, the tunnel's others go on (what
            # is still on its way for it is dropped, as for any ended stream).
            self.client.refuse(
                self, too_large(self.client.max_body, "request body (for this agent)")
            )
            return
        self.body.append(payload)
        # Held until END, as the callback server holds a body (its signature covers it all).
        credit = self.receive_window.consumed(len(payload))
        if credit:
            self.client.send_soon(tunnel.encode_window(self.id, credit))

    def start(self) -> None:
        if self.task is not None:
            raise ProtocolError(f"a second END on stream {self.id}")
        self.task = asyncio.ensure_future(self.run())

    def cancel(self) -> None:
        self.send_window.close()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def run(self) -> None:
        client = self.client
        try:
            await self._relay()
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("stream %d to the local server failed: %s", self.id, exc)
            await client.fail_stream(self.id, 502, "The agent lost its answer mid-way.")
        finally:
            client.streams.pop(self.id, None)

    async def _relay(self) -> None:
        client = self.client
        body, self.body = b"".join(self.body), []
        resp = await client.session.request(
            self.method, client.local + self.path, headers=self.headers, data=body
        )
        try:
            headers = {
                k: v for k, v in resp.headers.items() if k.lower() not in HOP_RESPONSE_HEADERS
            }
            head = {"status": resp.status, "headers": headers}
            await client.send(tunnel.encode_json(FrameType.RESPONSE, self.id, head))
            while True:
                credit = await self.send_window.wait()
                if credit == 0:
                    return  # cancelled
                chunk = await resp.content.read(min(credit, tunnel.MAX_DATA))
                if not chunk:
                    break
                self.send_window.spend(len(chunk))
                client.metrics.tunnel_sent(len(chunk), self.send_window.peak)
                await client.send(tunnel.encode(FrameType.DATA, self.id, chunk))
            await client.send(tunnel.encode(FrameType.END, self.id))
        finally:
            # Closed, not released: an unfinished answer drops the loopback connection, and
            # with it the engine's (that is how an engine learns nobody listens).
            resp.close()


class TunnelClient:
    """The agent's end of its tunnel: connects, reconnects, and serves the hub's streams."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        hub: str,
        key: str,
        local: str,
        metrics: AgentMetrics,
        max_body: int,
        on_connect: Callable[[], None],
    ) -> None:
        self.session = session
        self.url = tunnel_url(hub)
        self._key = key
        #: The loopback callback server, ``http://127.0.0.1:PORT``.
        self.local = local
        self.metrics = metrics
        self.max_body = max_body
        self.on_connect = on_connect
        self.streams: dict[int, AgentStream] = {}
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._send_lock = asyncio.Lock()
        self._reply: asyncio.Future[tuple[int, bytes]] | None = None
        self._beat_lock = asyncio.Lock()
        #: Seconds the hub's last refusal asked us to wait (``Retry-After``), at least.
        self._retry_after = 0.0
        #: Set by :meth:`shutdown`: the tunnel closes with 1001 and is not dialled again.
        self._leaving = False

    # -- the connection --
    async def run(self) -> None:
        """Connect and serve until cancelled; raises :class:`Refused` for a refused key."""
        failures = 0
        while True:
            started = time.monotonic()
            try:
                reason = await self._connected()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                reason = describe(exc, "the hub")
            if self._leaving:
                return
            failures = 1 if time.monotonic() - started > STABLE_AFTER else failures + 1
            delay, self._retry_after = max(backoff(failures), self._retry_after), 0.0
            log.warning("tunnel lost: %s; reconnecting in %.1f s", reason, delay)
            await asyncio.sleep(delay)

    async def _connected(self) -> str:
        """One connection, from the handshake to its end; why it ended."""
        started = time.perf_counter()
        try:
            ws = await self.session.ws_connect(
                self.url,
                headers={wire.AUTH_HEADER: wire.bearer(self._key)},
                max_msg_size=tunnel.MAX_TEXT,
                autoping=True,
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (401, 403):
                # The handshake carries no error body: the status alone says which refusal.
                # aiohttp's message ("Invalid response status") would tell the user nothing.
                if exc.status == 401:
                    raise Refused(401, "invalid_api_key", "the key is wrong or revoked") from None
                raise Refused(
                    403, "insufficient_scope", "this key's scope does not allow running an agent"
                ) from None
            return self._refusal(exc)
        rtt = (time.perf_counter() - started) * 1000
        log.info("tunnel connected to %s (rtt %.1f ms)", self.url, rtt)
        self._ws = ws
        self.metrics.tunnel_connected.set(1)
        self.on_connect()
        try:
            return await self._serve(ws)
        finally:
            self._lost()
            # While shutdown() closes it, this receiving task sees the close first (aiohttp):
            # its close must carry the same code and reason, or the hub gets a bare 1000.
            if self._leaving:
                await ws.close(code=tunnel.CLOSE_GOING_AWAY, message=GOING_AWAY)
            else:
                await ws.close()

    def _refusal(self, exc: aiohttp.WSServerHandshakeError) -> str:
        """Why the hub refused the handshake, in words, and how long it asked us to wait."""
        retry_after = exc.headers.get("Retry-After", "") if exc.headers else ""
        if retry_after.isdigit():
            self._retry_after = min(MAX_BACKOFF, float(retry_after))
        if exc.status == 429:
            return (
                "the hub refused the tunnel: this user has as many tunnels open as it allows "
                "(HTTP 429 tunnel_limit_reached; stop another agent of this user)"
            )
        if exc.status == 503:
            return (
                "the hub refused the tunnel: it holds as many tunnels as it allows "
                "(HTTP 503 tunnel_capacity_reached)"
            )
        return f"the hub refused the tunnel (HTTP {exc.status})"

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.BINARY:
                try:
                    self._on_frame(tunnel.decode(msg.data))
                except ProtocolError as exc:
                    await ws.close(code=tunnel.CLOSE_PROTOCOL, message=str(exc)[:120].encode())
                    return f"protocol error: {exc}"
            elif msg.type == aiohttp.WSMsgType.TEXT:
                self._on_text(msg.data)
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING):
                return f"closed by the hub ({ws.close_code}: {msg.extra or 'no reason'})"
            else:  # CLOSED, ERROR
                return f"connection lost ({ws.exception() or msg.type.name.lower()})"

    def _lost(self) -> None:
        self._ws = None
        self.metrics.tunnel_connected.set(0)
        for stream in list(self.streams.values()):
            stream.cancel()
        self.streams.clear()
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(aiohttp.ClientConnectionError("the tunnel was lost"))

    # -- frames --
    def _on_frame(self, frame: Frame) -> None:
        kind = frame.type
        if kind is FrameType.OPEN:
            if frame.stream in self.streams:
                raise ProtocolError(f"stream {frame.stream} is open already")
            if len(self.streams) >= tunnel.MAX_STREAMS:
                raise ProtocolError(f"more than {tunnel.MAX_STREAMS} streams")
            self.streams[frame.stream] = AgentStream(self, frame)
            return
        stream = self.streams.get(frame.stream)
        if stream is None:
            return  # a stream that ended here: what was on its way is dropped
        if kind is FrameType.DATA:
            stream.on_data(frame.payload)
        elif kind is FrameType.END:
            stream.start()
        elif kind is FrameType.WINDOW:
            stream.send_window.grant(frame.credit())
        elif kind is FrameType.CANCEL:
            log.info("the hub cancelled stream %d", frame.stream)
            self.streams.pop(frame.stream, None)
            stream.cancel()
        else:
            raise ProtocolError(f"{kind.name} frames go from the agent to the hub only")

    def _on_text(self, text: str) -> None:
        try:
            data = json.loads(text)
        except ValueError:
            log.warning("the hub sent a text message that is not JSON")
            return
        reply = self._reply
        if not isinstance(data, dict) or data.get("type") != "heartbeat_reply":
            return
        if reply is not None and not reply.done():
            status = data.get("status")
            body = json.dumps(data.get("body")).encode()
            reply.set_result((status if isinstance(status, int) else 502, body))

    # -- sending --
    async def send(self, message: bytes) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            raise ConnectionResetError("the tunnel is not connected")
        async with self._send_lock:
            await ws.send_bytes(message)

    def send_soon(self, message: bytes) -> None:
        asyncio.ensure_future(self._send_quietly(message))

    async def _send_quietly(self, message: bytes) -> None:
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            await self.send(message)

    def refuse(self, stream: AgentStream, error: OpenAIError) -> None:
        """End ``stream`` at once with ``error`` (an ERROR frame), before it reached anything."""
        self.streams.pop(stream.id, None)
        stream.body = []
        self.send_soon(error_frame(stream.id, error))

    async def fail_stream(self, stream_id: int, status: int, message: str) -> None:
        """End a stream with an ERROR frame (an OpenAI error object and its status)."""
        frame = error_frame(stream_id, OpenAIError(status, message, "server_error"))
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            await self.send(frame)

    async def exchange(self, kind: str, payload: dict[str, Any]) -> tuple[int, bytes]:
        """A heartbeat (``kind`` ``heartbeat`` or ``goodbye``) and the hub's reply, as the
        HTTP endpoint gives them: ``(status, JSON body)``. ``ClientConnectionError`` while
        the tunnel is down (the heartbeat loop retries)."""
        async with self._beat_lock:
            ws = self._ws
            if ws is None or ws.closed:
                raise TunnelDown("the tunnel is not connected")
            reply: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
            self._reply = reply
            await ws.send_str(tunnel.text_message(kind, payload=payload))
            async with asyncio.timeout(REPLY_TIMEOUT):
                return await reply

    async def shutdown(self) -> None:
        """The drain deadline passed: streams still open end with an error, then the tunnel
        closes."""
        for stream_id, stream in list(self.streams.items()):
            stream.cancel()
            await self.fail_stream(stream_id, 503, "The agent is shutting down.")
        self._leaving = True
        ws = self._ws
        if ws is not None:
            await ws.close(code=tunnel.CLOSE_GOING_AWAY, message=GOING_AWAY)
