from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.hubproc import HubProcess, start_hub
from tests.support.postgres import drop_own_database
from tests.support.processguard import ProcessGuard

# The fake hub and agent runner fixtures plugin authors use (`fake_hub`, `start_agent`).
pytest_plugins = ["inferclub.testing"]

GUARD = pytest.StashKey[ProcessGuard]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[GUARD] = ProcessGuard().install()


def pytest_sessionfinish(session: pytest.Session) -> None:
    # Each pytest-xdist worker finishes its own session, and drops its own database.
    drop_own_database()


@pytest.fixture(autouse=True)
def processes_need_the_subprocess_marker(request: pytest.FixtureRequest) -> Iterator[None]:
    """Only tests marked `subprocess` start processes (see tests/support/processguard.py)."""
    guard = request.config.stash[GUARD]
    guard.allowed = request.node.get_closest_marker("subprocess") is not None
    try:
        yield
    finally:
        guard.allowed = True


@pytest.fixture(autouse=True)
def leftover_event_loop_closed() -> Iterator[None]:
    """Tornado's ``IOLoop()`` (pytest-tornasync's ``io_loop``) has asyncio create a default
    loop that nobody closes. A later ``asyncio.run()`` drops it, and the garbage collector's
    ResourceWarning (an error here) then fails whichever test happens to be running. Closed
    after each test instead, once the test's own loops are done with."""
    yield
    policy = asyncio.get_event_loop_policy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            loop = policy.get_event_loop()
        except RuntimeError:  # none set, and none may be created here
            return
    if not loop.is_running() and not loop.is_closed():
        loop.close()
        policy.set_event_loop(None)


@pytest.fixture
def hub_process(tmp_path: Path) -> Iterator[HubProcess]:
    """A real hub subprocess on port 0 with its own database."""
    with start_hub(tmp_path) as h:
        yield h
