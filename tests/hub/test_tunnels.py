"""The hub's end of a tunnel without sockets: frames out, frames in, windows granted back only
as the relay consumes, cancels, and a closed tunnel failing its streams."""

from __future__ import annotations

import asyncio

import pytest

from inferclub import tunnel
from inferclub.hub.relay.connect import Upstream
from inferclub.hub.tunnels import Tunnel, TunnelBroken, TunnelResponse
from inferclub.openai_errors import OpenAIError
from inferclub.tunnel import FrameType, ProtocolError

UPSTREAM = Upstream("http://tunnel.invalid/v1/chat/completions", {"X-Request-Id": "r"}, "rig", 7)


def frames(sent: list[bytes]) -> list[tuple[FrameType, int, bytes]]:
    return [(f.type, f.stream, f.payload) for f in map(tunnel.decode, sent)]


async def opened(held: Tunnel, stream_id: int = 1, body: bytes = b"{}") -> TunnelResponse:
    """A stream opened on ``held``, the agent's answer head (200, an event stream) in."""
    task = asyncio.ensure_future(held.open(UPSTREAM, body))
    await asyncio.sleep(0.01)
    head = {"status": 200, "headers": {"Content-Type": "text/event-stream"}}
    held.on_frame(tunnel.decode(tunnel.encode_json(FrameType.RESPONSE, stream_id, head)))
    return await task


def test_a_stream_goes_out_as_frames_and_window_is_granted_as_consumed() -> None:
    sent: list[bytes] = []

    async def send(message: bytes) -> None:
        sent.append(message)

    async def scenario() -> None:
        held = Tunnel(send, 4, "rig")
        resp = await opened(held, body=b"x" * 100)
        kinds = [f[0] for f in frames(sent)]
        assert kinds == [FrameType.OPEN, FrameType.DATA, FrameType.END]
        assert b'"path":"/v1/chat/completions"' in sent[0]
        piece = b"y" * tunnel.MAX_DATA
        for _ in range(tunnel.INITIAL_WINDOW // tunnel.MAX_DATA):  # the whole window
            held.on_frame(tunnel.decode(tunnel.encode(FrameType.DATA, 1, piece)))
        sent.clear()
        chunks = resp.content.iter_any()
        await chunks.__anext__()
        await chunks.__anext__()  # the first went out: a quarter window, not worth a frame
        assert sent == []
        await chunks.__anext__()  # the second too: half a window is granted back
        [grant] = map(tunnel.decode, sent)
        assert (grant.type, grant.credit()) == (FrameType.WINDOW, 2 * tunnel.MAX_DATA)
        await chunks.__anext__()
        held.on_frame(tunnel.decode(tunnel.encode(FrameType.END, 1)))
        with pytest.raises(StopAsyncIteration):
            await chunks.__anext__()

    asyncio.run(scenario())


def test_an_overrun_window_is_a_protocol_error() -> None:
    async def send(message: bytes) -> None:
        return None

    async def scenario() -> None:
        held = Tunnel(send, 4, "rig")
        await opened(held)
        too_much = tunnel.encode(FrameType.DATA, 1, b"z" * tunnel.MAX_DATA)
        with pytest.raises(ProtocolError, match="overruns the window"):
            for _ in range(tunnel.INITIAL_WINDOW // tunnel.MAX_DATA + 1):
                held.on_frame(tunnel.decode(too_much))

    asyncio.run(scenario())


def test_closing_an_unfinished_stream_cancels_it_and_a_closed_tunnel_fails_streams() -> None:
    sent: list[bytes] = []

    async def send(message: bytes) -> None:
        sent.append(message)

    async def scenario() -> None:
        held = Tunnel(send, 4, "rig")
        resp = await opened(held)
        resp.close()
        await asyncio.sleep(0.01)
        assert frames(sent)[-1][:2] == (FrameType.CANCEL, 1)
        second = await opened(held, 2)
        held.close("the agent went away")
        with pytest.raises(TunnelBroken, match="the agent went away"):
            await second.content.iter_any().__anext__()
        with pytest.raises(OpenAIError) as refused:
            await held.open(UPSTREAM, b"")
        assert refused.value.status == 502 and refused.value.code == "upstream_unreachable"

    asyncio.run(scenario())


def test_an_error_frame_before_the_answer_fails_over_with_the_agents_error() -> None:
    async def send(message: bytes) -> None:
        return None

    async def scenario() -> None:
        held = Tunnel(send, 1, "rig")
        task = asyncio.ensure_future(held.open(UPSTREAM, b""))
        await asyncio.sleep(0.01)
        with pytest.raises(OpenAIError, match="1 requests open"):
            await held.open(UPSTREAM, b"")  # the tunnel's stream limit
        error = {"status": 503, "error": {"message": "engine down", "type": "x", "code": None}}
        held.on_frame(tunnel.decode(tunnel.encode_json(FrameType.ERROR, 1, error)))
        with pytest.raises(OpenAIError, match="engine down") as failed:
            await task
        assert failed.value.status == 503

    asyncio.run(scenario())


def test_an_answer_head_the_hub_cannot_relay_is_a_protocol_error() -> None:
    # Tornado refuses a body on a 1xx, 204 or 304 answer (an uncaught RuntimeError and a 500
    # with a traceback in the hub's log): the agent broke the protocol, and is told so.
    async def send(message: bytes) -> None:
        return None

    async def scenario() -> None:
        held = Tunnel(send, 4, "rig")
        task = asyncio.ensure_future(held.open(UPSTREAM, b""))
        await asyncio.sleep(0.01)
        informational = {"status": 101, "headers": {}}
        with pytest.raises(ProtocolError, match="valid status"):
            held.on_frame(tunnel.decode(tunnel.encode_json(FrameType.RESPONSE, 1, informational)))
        held.on_frame(
            tunnel.decode(tunnel.encode_json(FrameType.RESPONSE, 1, {"status": 204, "headers": {}}))
        )
        await task
        with pytest.raises(ProtocolError, match="no body"):
            held.on_frame(tunnel.decode(tunnel.encode(FrameType.DATA, 1, b"x")))
        held.on_frame(tunnel.decode(tunnel.encode(FrameType.END, 1)))  # without DATA: fine

    asyncio.run(scenario())
