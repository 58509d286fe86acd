"""The agent->hub tunnel's frames, once, for both ends (docs/protocol.md, "The tunnel").

An agent that cannot be reached (NAT) dials the hub at ``/v1/agent/tunnel`` and keeps one
WebSocket open. Heartbeats travel on it as text messages (JSON); every request the hub
forwards is a *stream* of binary messages, one frame each: a 5-byte header (type, stream id)
and a payload.

Flow control is per stream and per direction, in bytes of DATA payload: each side may send
only as much as the other granted (:data:`INITIAL_WINDOW` to begin with, then each WINDOW
frame's credit). A receiver grants what it has passed on, so a slow reader stops its sender:
one slow client never makes the agent buffer more than a window, and one large upload never
holds up other streams (each waits for its own credit only).

Everything here is pure: no sockets, so it is tested without any.
"""

from __future__ import annotations

import asyncio
import enum
import json
import struct
from dataclasses import dataclass
from typing import Any

#: Where the agent dials in.
TUNNEL_PATH = "/v1/agent/tunnel"

#: The most DATA payload in one frame.
MAX_DATA = 64 * 1024
#: The largest binary message: a DATA frame and its header, or a head (request or response
#: headers as JSON) of at most this size.
MAX_FRAME = MAX_DATA + 64
#: The largest text message (a heartbeat): the hub's ``max_heartbeat_body`` applies too.
MAX_TEXT = 4 * 1024 * 1024
#: Bytes each side may send on a new stream before the other grants more.
INITIAL_WINDOW = 256 * 1024
#: The most a window may grow to; a grant past it is a protocol error.
MAX_WINDOW = 16 * 1024 * 1024
#: Streams open at once on one tunnel, at most.
MAX_STREAMS = 1024

_HEADER = struct.Struct("!BI")
HEADER_SIZE = _HEADER.size
_CREDIT = struct.Struct("!I")

#: WebSocket close codes the tunnel uses (4000-4999 are the application's).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL = 4400
CLOSE_REFUSED = 4409
CLOSE_PING_TIMEOUT = 4408


class FrameType(enum.IntEnum):
    OPEN = 1  #: hub -> agent: the request head (JSON: method, path, headers)
    DATA = 2  #: both ways: body bytes, within the window
    END = 3  #: both ways: no more body on this stream
    RESPONSE = 4  #: agent -> hub: the response head (JSON: status, headers)
    WINDOW = 5  #: both ways: 4-byte credit, more bytes the other side may send
    CANCEL = 6  #: hub -> agent: the client left; drop the stream at once
    ERROR = 7  #: agent -> hub: the stream failed (JSON: an OpenAI error object)


class ProtocolError(ValueError):
    """The other side broke the protocol: the tunnel is closed with this reason."""


@dataclass(frozen=True)
class Frame:
    type: FrameType
    stream: int
    payload: bytes = b""

    def json(self) -> dict[str, Any]:
        """The payload of an OPEN, RESPONSE or ERROR frame; a ProtocolError if not an object."""
        try:
            data = json.loads(self.payload)
        except (ValueError, RecursionError):
            raise ProtocolError(f"{self.type.name} frame is not JSON") from None
        if not isinstance(data, dict):
            raise ProtocolError(f"{self.type.name} frame is not a JSON object")
        return data

    def credit(self) -> int:
        if self.type is not FrameType.WINDOW or len(self.payload) != _CREDIT.size:
            raise ProtocolError("WINDOW frame must carry a 4-byte credit")
        (credit,) = _CREDIT.unpack(self.payload)
        if credit == 0:
            raise ProtocolError("WINDOW frame grants nothing")
        return int(credit)


def encode(ftype: FrameType, stream: int, payload: bytes = b"") -> bytes:
    if len(payload) + HEADER_SIZE > MAX_FRAME:
        raise ValueError(f"frame payload of {len(payload)} bytes is over the limit")
    return _HEADER.pack(ftype, stream) + payload


def encode_json(ftype: FrameType, stream: int, data: dict[str, Any]) -> bytes:
    return encode(ftype, stream, json.dumps(data, separators=(",", ":")).encode())


def encode_window(stream: int, credit: int) -> bytes:
    return encode(FrameType.WINDOW, stream, _CREDIT.pack(credit))


def decode(message: bytes) -> Frame:
    """One binary message as a frame; a ProtocolError names what is wrong with it."""
    if len(message) < HEADER_SIZE:
        raise ProtocolError(f"frame of {len(message)} bytes is shorter than its header")
    if len(message) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(message)} bytes is over the {MAX_FRAME} limit")
    code, stream = _HEADER.unpack_from(message)
    try:
        ftype = FrameType(code)
    except ValueError:
        raise ProtocolError(f"unknown frame type {code}") from None
    if stream == 0:
        raise ProtocolError("stream id 0 is reserved")
    return Frame(ftype, stream, message[HEADER_SIZE:])


def text_message(kind: str, **fields: Any) -> str:
    """A text message: ``{"type": kind, ...}`` (heartbeat, heartbeat_reply, goodbye)."""
    return json.dumps({"type": kind, **fields}, separators=(",", ":"))


class SendWindow:
    """What this side may still send on one stream: :meth:`wait` for credit, :meth:`spend`
    what was sent. ``peak`` is the most ever sent and not yet granted back: never more than
    the initial window, whatever the reader does (the agent exposes it, to show just that)."""

    def __init__(self, initial: int = INITIAL_WINDOW) -> None:
        self.available = initial
        self.peak = 0
        self._unacked = 0
        self._more = asyncio.Event()
        self.closed = False

    def grant(self, credit: int) -> None:
        self.available += credit
        self._unacked -= credit
        if self.available > MAX_WINDOW:
            raise ProtocolError(f"window grown past {MAX_WINDOW} bytes")
        self._more.set()

    def close(self) -> None:
        """The stream ended: wake a waiting sender (it then finds ``closed``)."""
        self.closed = True
        self._more.set()

    async def wait(self) -> int:
        """Wait until some credit is there and return it (0 once closed)."""
        while self.available <= 0 and not self.closed:
            self._more.clear()
            await self._more.wait()
        return 0 if self.closed else self.available

    def spend(self, size: int) -> None:
        if size > self.available:
            raise ValueError(f"{size} bytes are past the window ({self.available})")
        self.available -= size
        self._unacked += size
        self.peak = max(self.peak, self._unacked)


class ReceiveWindow:
    """What the other side may still send on one stream, and what to grant it back."""

    def __init__(self, initial: int = INITIAL_WINDOW) -> None:
        self.initial = initial
        self.remaining = initial
        #: Received and passed on, not yet granted back.
        self._consumed = 0

    def received(self, size: int) -> None:
        """DATA of ``size`` bytes arrived; a ProtocolError past the window."""
        if size > self.remaining:
            raise ProtocolError(f"DATA of {size} bytes overruns the window ({self.remaining})")
        self.remaining -= size

    def consumed(self, size: int) -> int:
        """``size`` bytes were passed on: the credit to grant now (0: not yet worth a frame).
        Granting in batches of half a window keeps WINDOW frames few."""
        self._consumed += size
        if self._consumed < self.initial // 2:
            return 0
        credit, self._consumed = self._consumed, 0
        self.remaining += credit
        return credit
