from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agentproc import AgentProcess, StartAgent, manifest_text
from tests.support.fakehub import KEY, FakeHub
from tests.support.fakes import FakeOllama, FakeVllm, FakeWhisperCpp


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as h:
        yield h


@pytest.fixture
def vllm() -> Iterator[FakeVllm]:
    with FakeVllm() as f:
        yield f


@pytest.fixture
def ollama() -> Iterator[FakeOllama]:
    with FakeOllama() as f:
        yield f


@pytest.fixture
def whispercpp() -> Iterator[FakeWhisperCpp]:
    with FakeWhisperCpp() as f:
        yield f


@pytest.fixture
def start_agent(tmp_path: Path, hub: FakeHub) -> Iterator[StartAgent]:
    """Start the agent CLI on a manifest (service dicts or `manifest=` text) against the fake
    hub, listening on 127.0.0.1 port 0; every process is killed at the end of the test."""
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
        argv = [
            "run",
            "--manifest",
            str(path),
            "--hub",
            hub_url or hub.root,
            "--listen",
            "127.0.0.1:0",
            *args,
        ]
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
