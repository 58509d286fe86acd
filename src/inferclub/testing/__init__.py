"""pytest fixtures for engine-plugin authors: a fake hub, and the real agent running against it.

Not loaded automatically. Enable them in your top-level ``conftest.py``::

    pytest_plugins = ["inferclub.testing"]

A test then starts ``inference-club-agent run`` on a manifest (on 127.0.0.1, port 0) against
the fake hub, waits until a heartbeat advertises the service, and sends the agent the request
the hub would send for a consumer::

    def test_chat(fake_hub, start_agent, my_engine):
        agent = start_agent({"name": "ex", "engine": "example", "url": my_engine.root})
        fake_hub.wait_for(lambda beat: bool(beat["services"]))
        agent.wait_registered()
        answer = fake_hub.proxy("POST", "/chat/completions", {...}, service="ex")
        assert answer.status == 200

Write the fake of your engine on `FakeServer` and `FakeHandler` (a Tornado application in a
thread, recording what it receives). The project's own agent tests use these same fixtures.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inferclub.testing.agent import AgentProcess, StartAgent, manifest_text, run_cli
from inferclub.testing.hub import (
    KEY,
    PROVIDER_ID,
    AgentResponse,
    FakeHub,
    advertised,
    send_to_agent,
)
from inferclub.testing.servers import FakeHandler, FakeServer, LoopThread, NotFound, Recorded

__all__ = [
    "KEY",
    "PROVIDER_ID",
    "AgentProcess",
    "AgentResponse",
    "FakeHandler",
    "FakeHub",
    "FakeServer",
    "LoopThread",
    "NotFound",
    "Recorded",
    "StartAgent",
    "advertised",
    "fake_hub",
    "manifest_text",
    "run_cli",
    "send_to_agent",
    "start_agent",
]


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    """A `FakeHub` on 127.0.0.1, port 0, accepting `KEY`, handing out `PROVIDER_ID` and
    signing what it sends the agent with a key of its own."""
    with FakeHub() as hub:
        yield hub


@pytest.fixture
def start_agent(tmp_path: Path, fake_hub: FakeHub) -> Iterator[StartAgent]:
    """Start ``inference-club-agent run`` on a manifest against `fake_hub`, listening on
    127.0.0.1 port 0; every agent started is killed at the end of the test.

    ``start_agent(*services, manifest=None, args=(), interval=1.0, key=KEY, hub_url=None,
    env=None, wait=True)``: the services are manifest entries (dicts), or ``manifest`` is the
    whole YAML text; ``args`` are extra command-line arguments; ``interval`` is the heartbeat
    interval in seconds (None: the hub's); ``key=None`` passes no ``--key``; ``wait`` waits
    until the agent prints where it listens. Hub keys are pinned in ``tmp_path/known_hubs``,
    never in the user's own state directory.
    """
    procs: list[AgentProcess] = []

    def start(
        *services: dict[str, Any],
        manifest: str | None = None,
        args: tuple[str, ...] = (),
        interval: float | None = 1.0,
        key: str | None = KEY,
        hub_url: str | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> AgentProcess:
        path = tmp_path / f"manifest-{len(procs)}.yaml"
        path.write_text(manifest if manifest is not None else manifest_text(*services))
        argv = ["run", "--manifest", str(path), "--hub", hub_url or fake_hub.root]
        argv += ["--listen", "127.0.0.1:0", "--known-hubs", str(tmp_path / "known_hubs"), *args]
        if interval is not None:
            argv += ["--heartbeat-interval", str(interval)]
        if key is not None:
            argv += ["--key", key]
        proc = AgentProcess(argv, env)
        procs.append(proc)
        if wait:
            proc.wait_listening()
        return proc

    yield start
    for proc in procs:
        proc.kill()
