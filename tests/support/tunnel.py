"""An agent that dials its hub (`run --tunnel`), for the tunnel's end-to-end tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inferclub.testing import AgentProcess, manifest_text
from tests.support.hubproc import HubProcess


def start_tunnel_agent(
    hub: HubProcess,
    key: str,
    path: Path,
    *services: dict[str, Any],
    name: str = "home-rig",
    extra: tuple[str, ...] = (),
) -> AgentProcess:
    """An agent on ``services`` through a tunnel, registered (its first beat accepted)."""
    path.write_text(manifest_text(*services))
    agent = AgentProcess(
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
    agent.wait_listening()
    agent.wait_registered()
    return agent
