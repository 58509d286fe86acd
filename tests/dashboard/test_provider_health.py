"""What the providers page is told of a provider's passive health and goodbye."""

from __future__ import annotations

import dataclasses
import time

from inferclub.hub.choose import Fleet
from inferclub.hub.handlers.dashboard import provider_json
from inferclub.hub.routing import Registry
from inferclub.hub.store import ProviderRecord, ServiceInfo
from inferclub.hub.tunnels import Tunnel, Tunnels


def test_the_providers_page_data_shows_cooling_down_and_leaving() -> None:
    now = time.time()
    rig = ProviderRecord(
        id=7,
        user_id=1,
        name="rig",
        callback_url="http://10.0.0.7:8000/v1",
        agent_version="test",
        health={},
        created_at=now,
        last_heartbeat_at=now,
        services=(ServiceInfo("chat", "llm", "vllm", (), ("m1",)),),
    )
    registry, fleet = Registry(60), Fleet(10)
    registry.update(rig)
    healthy = provider_json(rig, registry, now, fleet)
    assert healthy["cooling_down"] is None and healthy["leaving"] is False
    fleet.failed(rig.id)
    cooling = provider_json(rig, registry, now, fleet)["cooling_down"]
    assert cooling is not None and 9 < cooling <= 10
    fleet.leaving(rig.id)
    leaving = provider_json(rig, registry, now, fleet)
    assert leaving["leaving"] is True
    # Shown as it routes: not online, its services' state unknown, until its next heartbeat.
    assert leaving["online"] is False


def test_the_providers_page_data_shows_the_transport_and_the_tunnels_rtt() -> None:
    now = time.time()
    rig = ProviderRecord(7, 1, "rig", "http://tunnel.invalid/v1", "t", {}, now, now)
    tunnelled = dataclasses.replace(rig, transport="tunnel")
    registry, tunnels = Registry(60), Tunnels()
    assert provider_json(rig, registry, now, None, tunnels)["transport"] == "callback"
    shown = provider_json(tunnelled, registry, now, None, tunnels)
    assert (shown["transport"], shown["tunnel_rtt_ms"]) == ("tunnel", None)  # held elsewhere

    async def send(_: bytes) -> None:
        return None

    held = Tunnel(send, 4, "rig")
    held.rtt_ms = 1.2345
    tunnels.hold(rig.id, held)
    assert provider_json(tunnelled, registry, now, None, tunnels)["tunnel_rtt_ms"] == 1.23
