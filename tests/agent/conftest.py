from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

# tests/ holds shared helpers (fakes/, hubproc.py); make them importable however pytest runs.
TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from agentproc import AgentProcess
from fakehub import KEY, FakeHub
from fakes import FakeOllama, FakeVllm, FakeWhisperCpp


def manifest_text(*services: dict[str, Any], agent: dict[str, Any] | None = None) -> str:
    doc: dict[str, Any] = {"hosts": [{"id": "test-rig", "services": list(services)}]}
    if agent:
        doc = {"agent": agent, **doc}
    return yaml.safe_dump(doc, sort_keys=False)


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


StartAgent = Callable[..., AgentProcess]


@pytest.fixture
def start_agent(tmp_path: Path, hub: FakeHub) -> Iterator[StartAgent]:
    """Start the agent CLI on a manifest (text or service dicts) against the fake hub."""
    procs: list[AgentProcess] = []

    def start(
        *services: dict[str, Any],
        manifest: str | None = None,
        args: tuple[str, ...] = (),
        interval: float = 1.0,
        key: str | None = KEY,
        hub_url: str | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> AgentProcess:
        path = tmp_path / f"manifest-{len(procs)}.yaml"
        path.write_text(manifest if manifest is not None else manifest_text(*services))
        argv = ["run", "--manifest", str(path), "--hub", hub_url or hub.root,
                "--listen", "127.0.0.1:0", "--heartbeat-interval", str(interval), *args]
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
