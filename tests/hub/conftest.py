"""Fixtures of the hub tests: the hub in the test's event loop, a fake agent for it, and a
user whose agent serves chat."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tornado.ioloop import IOLoop

from tests.support.fakes.agent import LLM, FakeAgent
from tests.support.hubapp import HubApp, running_hub


@pytest.fixture
def hub_app(tmp_path: Path, io_loop: IOLoop) -> Iterator[HubApp]:
    """The hub in-process (test settings, its own database), serving on port 0 in the loop
    the test's coroutine runs in."""
    hub = running_hub(tmp_path)
    app = io_loop.run_sync(hub.__aenter__)
    try:
        yield app
    finally:
        io_loop.run_sync(lambda: hub.__aexit__(None, None, None))


@pytest.fixture
def fake_agent() -> Iterator[FakeAgent]:
    """A fake agent serving chat for `m1` and `shared` (other endpoints take any model)."""
    with FakeAgent(["m1", "shared"]) as agent:
        yield agent


@pytest.fixture
def alice(hub_app: HubApp, fake_agent: FakeAgent, io_loop: IOLoop) -> str:
    """Alice's key; her agent `rig` serves `m1`."""

    async def register() -> str:
        key = await hub_app.user_with_key("alice")
        status, body = await hub_app.heartbeat(key, "rig", fake_agent.url, LLM)
        assert status == 200, body
        return key

    return io_loop.run_sync(register)
