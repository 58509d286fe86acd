"""The agent's end of a tunnel, frame by frame: a request body over the agent's limit ends its
own stream with an OpenAI 413, and the tunnel's other streams go on."""

from __future__ import annotations

import asyncio
import json

from inferclub import tunnel
from inferclub.agent.metrics import AgentMetrics
from inferclub.agent.services import ServiceTable
from inferclub.agent.tunnel import TunnelClient
from inferclub.engines import get_engines, get_plugin_manager
from inferclub.tunnel import FrameType


class RecordingSocket:
    """What the agent sends on its WebSocket, as frames."""

    closed = False

    def __init__(self) -> None:
        self.sent: list[tunnel.Frame] = []

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(tunnel.decode(data))


def open_frame(stream: int) -> tunnel.Frame:
    head = {"method": "POST", "path": "/v1/chat/completions", "headers": {}}
    return tunnel.decode(tunnel.encode_json(FrameType.OPEN, stream, head))


async def test_an_oversize_body_ends_its_stream_with_a_413_and_not_the_tunnel() -> None:
    table = ServiceTable([], get_engines(get_plugin_manager(entrypoints=False)))
    client = TunnelClient(
        None,  # type: ignore[arg-type]  # no request reaches the local server here
        hub="http://hub.test",
        key="k",
        local="http://127.0.0.1:9",
        metrics=AgentMetrics(table),
        max_body=10,
        on_connect=lambda: None,
    )
    ws = RecordingSocket()
    client._ws = ws  # type: ignore[assignment]
    client._on_frame(open_frame(1))
    client._on_frame(open_frame(3))
    client._on_frame(tunnel.decode(tunnel.encode(FrameType.DATA, 1, b"x" * 11)))
    # The rest of that body, already on its way, is dropped; stream 3 is untouched.
    client._on_frame(tunnel.decode(tunnel.encode(FrameType.DATA, 1, b"y")))
    client._on_frame(tunnel.decode(tunnel.encode(FrameType.DATA, 3, b"z" * 5)))
    await asyncio.sleep(0)  # the ERROR frame is sent by a task
    await asyncio.sleep(0)
    (error,) = [f for f in ws.sent if f.type is FrameType.ERROR]
    body = json.loads(error.payload)
    assert error.stream == 1 and body["status"] == 413
    assert body["error"]["code"] == "request_too_large"
    assert "10 bytes" in body["error"]["message"]
    assert set(client.streams) == {3}
