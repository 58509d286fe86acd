"""An agent that dials its hub (`run --tunnel`), for the tunnel's end-to-end tests."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.message import Message
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from inferclub import tunnel, wire
from inferclub.testing import AgentProcess, manifest_text
from tests.support.hubproc import HubProcess


def tunnel_agent(
    hub: HubProcess,
    key: str,
    path: Path,
    *services: dict[str, Any],
    name: str = "home-rig",
    extra: tuple[str, ...] = (),
) -> AgentProcess:
    """An agent on ``services`` dialling ``hub``, started (not waited for)."""
    path.write_text(manifest_text(*services))
    return AgentProcess(
        [
            "run",
            "--tunnel",
            "--manifest",
            str(path),
            "--hub",
            hub.url,
            "--key",
            key,
            "--name",
            name,
            "--heartbeat-interval",
            "1",
            *extra,
        ]
    )


def start_tunnel_agent(
    hub: HubProcess,
    key: str,
    path: Path,
    *services: dict[str, Any],
    name: str = "home-rig",
    extra: tuple[str, ...] = (),
) -> AgentProcess:
    """An agent on ``services`` through a tunnel, registered (its first beat accepted)."""
    agent = tunnel_agent(hub, key, path, *services, name=name, extra=extra)
    agent.wait_listening()
    agent.wait_registered()
    return agent


class RawTunnel:
    """A hand-driven agent end of a tunnel (aiohttp): the tests play a hostile or broken
    agent frame by frame."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def beat(self, name: str, models: tuple[str, ...] = ("m1",)) -> dict[str, Any]:
        """One heartbeat; the hub's reply message (``status``, ``body``)."""
        hb = wire.Heartbeat(
            name, "http://127.0.0.1:9/v1", "test", (wire.AdvertisedService("chat", models=models),)
        )
        await self.ws.send_str(tunnel.text_message("heartbeat", payload=hb.to_json()))
        return await self.text()

    async def text(self) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        data: dict[str, Any] = json.loads(msg.data)
        return data

    async def frame(self) -> tunnel.Frame:
        msg = await self.ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.BINARY, msg
        return tunnel.decode(msg.data)

    async def closed(self) -> tuple[int | None, str]:
        """Wait for the hub to close the tunnel: its close code and reason."""
        while True:
            msg = await self.ws.receive(timeout=10)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                return self.ws.close_code, str(msg.extra or "")


@asynccontextmanager
async def raw_tunnel(hub: HubProcess, key: str) -> AsyncIterator[RawTunnel]:
    url = hub.url.replace("http://", "ws://") + tunnel.TUNNEL_PATH
    async with aiohttp.ClientSession() as session:
        headers = {wire.AUTH_HEADER: wire.bearer(key)}
        async with session.ws_connect(url, headers=headers) as ws:
            yield RawTunnel(ws)


UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


def refused_upgrade(hub: HubProcess, key: str | None) -> tuple[int, dict[str, Any], str]:
    """A tunnel upgrade the hub must refuse: its status, JSON error and ``X-Request-Id``."""
    status, body, headers = refusal(hub.url, key)
    return status, body, headers.get("X-Request-Id", "")


def refusal(base: str, key: str | None) -> tuple[int, dict[str, Any], Message]:
    """A tunnel upgrade at ``base`` the hub must refuse: status, JSON error and headers."""
    headers = dict(UPGRADE)
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(base + tunnel.TUNNEL_PATH, headers=headers)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    err = caught.value
    with err:
        return err.code, json.loads(err.read()), err.headers
