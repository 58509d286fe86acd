"""The hub's end of agents' tunnels (docs/protocol.md, "The tunnel").

A :class:`Tunnel` is one agent's WebSocket, seen as streams: :meth:`Tunnel.open` sends a
signed request as frames and returns a :class:`TunnelResponse`, which the relay reads exactly
as it reads an aiohttp response (status, headers, ``content.iter_any()``, ``close()``).
Window is granted back only as the relay asks for the next chunk, that is once the previous
one was written to the client and flushed: a slow client stops the agent.

:class:`Tunnels` maps provider ids to the tunnels this process holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from multidict import CIMultiDict, CIMultiDictProxy

from inferclub import tunnel
from inferclub.openai_errors import OpenAIError, normalise_error_body
from inferclub.tunnel import Frame, FrameType, ProtocolError, ReceiveWindow, SendWindow

if TYPE_CHECKING:
    from inferclub.hub.relay.connect import Upstream

log = logging.getLogger("inferclub.tunnel")

#: On a request one hub process forwards to the one holding the provider's tunnel
#: (:mod:`inferclub.hub.internal`): the provider it is for. The signature covers the provider
#: id, so a wrong one fails it.
PROVIDER_ID_HEADER = "X-InferClub-Provider-Id"
#: The callback URL recorded for a tunnelled provider when its hub process has no internal
#: listener (in-process hubs): only its path matters, the signed request target as the agent
#: sees it. ``.invalid`` never resolves, so nothing can ever connect to it.
TUNNEL_HOST = "tunnel.invalid"
TUNNEL_CALLBACK_URL = f"http://{TUNNEL_HOST}/v1"

#: Sends one binary message; raises :class:`TunnelBroken` once the tunnel is gone.
Send = Callable[[bytes], Awaitable[None]]
#: Closes the tunnel's WebSocket with a close code and a reason.
HangUp = Callable[[int, str], None]


def _no_hang_up(code: int, reason: str) -> None:
    pass


class TunnelBroken(ConnectionError):
    """The tunnel closed (or the agent failed the stream) while a request was on it. An
    ``OSError``, as a broken connection is: the relay treats both alike."""


class AgentFailedStream(TunnelBroken):
    """The agent ended a stream with an ERROR frame after its answer began: the client's
    final error event carries :attr:`error`, the agent's own words."""

    def __init__(self, error: OpenAIError) -> None:
        super().__init__(error.message)
        self.error = error


class TunnelBody:
    """A tunnelled answer's body, chunk by chunk, granting window as each is consumed."""

    def __init__(self, stream: TunnelResponse) -> None:
        self._stream = stream

    async def iter_any(self) -> AsyncIterator[bytes]:
        stream = self._stream
        while True:
            chunk = await stream.next_chunk()
            if chunk is None:
                return
            yield chunk
            # Here once the consumer asks for more: the chunk went out to the client.
            await stream.consumed(len(chunk))


class TunnelResponse:
    """One stream on a tunnel: the request sent, its answer as it comes."""

    content_length: int | None = None

    def __init__(self, owner: Tunnel, stream_id: int) -> None:
        self._tunnel = owner
        self.id = stream_id
        self.status = 0
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self.content = TunnelBody(self)
        self.head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.send_window = SendWindow()
        self._receive_window = ReceiveWindow()
        self._chunks: deque[bytes] = deque()
        self._arrived = asyncio.Event()
        self._ended = False
        self._error: Exception | None = None

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip().lower()

    # -- frames from the agent --
    def on_response(self, frame: Frame) -> None:
        if self.head.done():
            raise ProtocolError(f"a second RESPONSE on stream {self.id}")
        head = frame.json()
        status, headers = head.get("status"), head.get("headers")
        if not isinstance(status, int) or not 200 <= status <= 599:
            # 1xx heads are the HTTP connection's business, never a final answer.
            raise ProtocolError("RESPONSE frame without a valid status (200-599)")
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ProtocolError("RESPONSE frame headers must map strings to strings")
        if not all(_valid_header(k, v) for k, v in headers.items()):
            # A line break would be a header injection: Tornado refuses to write it, with
            # a 500 and a traceback, so it is the agent's protocol error, caught here.
            raise ProtocolError("RESPONSE frame has a header name or value HTTP forbids")
        self.status = status
        self.headers = CIMultiDictProxy(CIMultiDict(headers))
        self.head.set_result(None)

    def on_data(self, payload: bytes) -> None:
        if not self.head.done() or self._ended:
            raise ProtocolError(f"DATA on stream {self.id} outside its response body")
        if self.status in _NO_BODY:
            # Tornado refuses to write it (a RuntimeError, a 500 and a traceback).
            raise ProtocolError(f"DATA on stream {self.id}: a {self.status} answer has no body")
        self._receive_window.received(len(payload))
        self._chunks.append(payload)
        self._arrived.set()

    def on_end(self) -> None:
        if not self.head.done():
            raise ProtocolError(f"END on stream {self.id} before its RESPONSE")
        self._ended = True
        self._arrived.set()

    def fail(self, error: Exception) -> None:
        """The stream cannot go on (an ERROR frame, the tunnel closed)."""
        self.send_window.close()
        if not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # retrieved: nobody may be waiting any more
        elif not self._ended and self._error is None:
            # Mid-body, the relay sees a broken connection: the client's stream ends with
            # its final error event.
            if isinstance(error, OpenAIError):
                error = AgentFailedStream(error)
            self._error = error if isinstance(error, OSError) else TunnelBroken(str(error))
            self._arrived.set()

    # -- the relay's side --
    async def next_chunk(self) -> bytes | None:
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._ended:
                return None
            self._arrived.clear()
            await self._arrived.wait()
        return self._chunks.popleft()

    async def consumed(self, size: int) -> None:
        credit = self._receive_window.consumed(size)
        if credit and not self._ended:
            await self._tunnel.send(tunnel.encode_window(self.id, credit))

    def close(self) -> None:
        """Done with it: an unfinished stream is cancelled at the agent at once."""
        self.send_window.close()
        self._tunnel.drop(self, cancel=not self._ended)


#: Statuses whose answer has no body (RFC 9110).
_NO_BODY = frozenset({204, 304})
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _valid_header(name: str, value: str) -> bool:
    return bool(_HEADER_NAME.fullmatch(name)) and not _HEADER_VALUE_FORBIDDEN.search(value)


def _error_of(frame: Frame, who: str) -> OpenAIError:
    """An ERROR frame's OpenAI error object, as the client will see it."""
    body = frame.json()
    status = body.get("status")
    code = status if isinstance(status, int) and 400 <= status <= 599 else 502
    shaped = normalise_error_body(code, frame.payload, "application/json")["error"]
    return OpenAIError(code, f"{who}: {shaped['message']}", shaped["type"], shaped["code"])


class Tunnel:
    """The hub's end of one agent's tunnel."""

    def __init__(
        self, send: Send, max_streams: int, provider: str = "", hang_up: HangUp = _no_hang_up
    ) -> None:
        self._send = send
        self.hang_up = hang_up
        self.max_streams = max_streams
        self.provider = provider
        self.streams: dict[int, TunnelResponse] = {}
        self._next_id = 1
        self.closed = False
        #: Round-trip time of the last ping, in milliseconds.
        self.rtt_ms: float | None = None

    async def send(self, message: bytes) -> None:
        if self.closed:
            raise TunnelBroken("the tunnel is closed")
        await self._send(message)

    async def open(self, upstream: Upstream, body: bytes) -> TunnelResponse:
        """Send the request and wait for the agent's response head. Raises
        :class:`OpenAIError` (502) when the tunnel cannot take it or the agent failed it."""
        who = upstream.who
        if self.closed:
            raise unreachable(who, "its tunnel closed")
        if len(self.streams) >= self.max_streams:
            raise unreachable(who, f"its tunnel has {self.max_streams} requests open")
        stream = TunnelResponse(self, self._next_id)
        self._next_id += 1
        self.streams[stream.id] = stream
        head = {"method": "POST", "path": upstream.target, "headers": upstream.headers}
        sender: asyncio.Task[None] | None = None
        try:
            await self.send(tunnel.encode_json(FrameType.OPEN, stream.id, head))
            sender = asyncio.ensure_future(self._send_body(stream, body))
            await stream.head
        except TunnelBroken as exc:
            stream.close()
            raise unreachable(who, str(exc) or "its tunnel closed") from None
        except BaseException:
            # The agent's error, or cancelled (the client left): the agent drops it too.
            stream.close()
            raise
        finally:
            if sender is not None and not sender.done():
                sender.cancel()
        return stream

    async def _send_body(self, stream: TunnelResponse, body: bytes) -> None:
        """The body in DATA frames within the agent's window, then END. Each stream waits
        for its own window only: one large upload never holds up the others."""
        view = memoryview(body)
        sent = 0
        try:
            while sent < len(body):
                credit = await stream.send_window.wait()
                if credit == 0:
                    return  # the stream ended first
                piece = bytes(view[sent : sent + min(credit, tunnel.MAX_DATA)])
                stream.send_window.spend(len(piece))
                await self.send(tunnel.encode(FrameType.DATA, stream.id, piece))
                sent += len(piece)
            await self.send(tunnel.encode(FrameType.END, stream.id))
        except TunnelBroken:
            return  # the stream fails with the tunnel

    def drop(self, stream: TunnelResponse, cancel: bool) -> None:
        if self.streams.pop(stream.id, None) is not None and cancel and not self.closed:
            asyncio.ensure_future(self._cancel(stream.id))

    async def _cancel(self, stream_id: int) -> None:
        # Gone already: the agent then dropped every stream with it.
        with contextlib.suppress(TunnelBroken):
            await self.send(tunnel.encode(FrameType.CANCEL, stream_id))

    def on_frame(self, frame: Frame) -> None:
        """A binary message from the agent; a ProtocolError closes the tunnel."""
        kind = frame.type
        if kind in (FrameType.OPEN, FrameType.CANCEL):
            raise ProtocolError(f"{kind.name} frames go from the hub to the agent only")
        stream = self.streams.get(frame.stream)
        if stream is None:
            if frame.stream >= self._next_id:
                raise ProtocolError(f"frame for stream {frame.stream}, never opened")
            return  # a stream the hub closed: what was on its way is dropped
        if kind is FrameType.RESPONSE:
            stream.on_response(frame)
        elif kind is FrameType.DATA:
            stream.on_data(frame.payload)
        elif kind is FrameType.END:
            stream.on_end()
        elif kind is FrameType.WINDOW:
            stream.send_window.grant(frame.credit())
        else:  # ERROR
            self.streams.pop(stream.id, None)
            stream.fail(_error_of(frame, f"The agent of {self.provider or 'the provider'}"))

    def close(self, reason: str) -> None:
        """The tunnel is gone: every stream on it fails now."""
        self.closed = True
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.fail(TunnelBroken(f"the tunnel closed ({reason})"))


def unreachable(who: str, why: str) -> OpenAIError:
    """Like a refused connection: the handler fails over to the next candidate."""
    return OpenAIError(
        502,
        f"The agent of {who} is unreachable ({why}).",
        "server_error",
        "upstream_unreachable",
    )


class Tunnels:
    """The tunnels this hub process holds, by provider id."""

    def __init__(self) -> None:
        self._by_provider: dict[int, Tunnel] = {}
        #: Tunnels open per user, with or without a provider yet (``tunnel_max_per_user``).
        self._open: Counter[int] = Counter()
        self._total = 0
        #: How to close each open tunnel (its WebSocket, with a code and a reason).
        self.closers: set[Callable[[int, str], None]] = set()

    async def close_all(self, reason: str, settle: float = 1.0) -> None:
        """Close every open tunnel as going away (the hub stops): agents log why and
        reconnect, instead of finding a dead connection. Waits up to ``settle`` seconds
        for the closing frames to go out."""
        for close in list(self.closers):
            close(tunnel.CLOSE_GOING_AWAY, reason)
        deadline = time.monotonic() + settle
        while self.closers and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    @property
    def open_count(self) -> int:
        """Tunnels open on this process, all users together (``tunnel_max_total``)."""
        return self._total

    def admit(self, user_id: int, limit: int, elsewhere: int = 0) -> bool:
        """Count one more open tunnel of the user; False (and not counted) when the user
        already has ``limit``: those open here plus ``elsewhere`` (held by other processes)."""
        if limit > 0 and self._open[user_id] + elsewhere >= limit:
            return False
        self._open[user_id] += 1
        self._total += 1
        return True

    def closed(self, user_id: int) -> None:
        """One of the user's admitted tunnels closed."""
        self._total -= 1
        self._open[user_id] -= 1
        if self._open[user_id] <= 0:
            del self._open[user_id]

    def __len__(self) -> int:
        return len(self._by_provider)

    def get(self, provider_id: int) -> Tunnel | None:
        return self._by_provider.get(provider_id)

    def hold(self, provider_id: int, held: Tunnel) -> Tunnel | None:
        """``held`` now carries the provider's requests; the tunnel it replaces, if any."""
        old = self._by_provider.get(provider_id)
        self._by_provider[provider_id] = held
        return old if old is not held else None

    def release(self, provider_id: int, held: Tunnel) -> bool:
        """Forget ``held`` if it is the provider's tunnel; True when it was."""
        if self._by_provider.get(provider_id) is held:
            del self._by_provider[provider_id]
            return True
        return False
