"""The whole path for end-to-end tests: the openai SDK -> the real hub -> the real agent (both
subprocesses) -> engines.

`Stack` starts a hub, a user with a key, and an agent on a manifest, and waits until the hub
lists every expected (model, type). Test modules start one stack per module; each test reads its
own history row by the `X-Request-Id` of its response, so tests do not depend on each other.
`start_agent_process` and `wait_models` are the same steps for tests that start their own agent.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai

from inferclub.testing import AgentProcess, manifest_text
from tests.support.hubproc import HubProcess, start_hub

#: Seconds between agent heartbeats in these tests (the hub's default asks for 30).
HEARTBEAT = 1.0


class Stack:
    def __init__(self, hub: HubProcess, key: str, agent: AgentProcess) -> None:
        self.hub = hub
        self.key = key
        self.agent = agent

    def client(self, timeout: float = 30) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.hub.api_base, api_key=self.key, max_retries=0, timeout=timeout
        )

    def listed(self) -> set[tuple[str, str]]:
        with self.client() as sdk:
            return {(m.id, (m.model_extra or {})["type"]) for m in sdk.models.list().data}

    def wait_listed(self, expected: set[tuple[str, str]], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while (listed := self.listed()) != expected:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"hub lists {sorted(listed)}, not {sorted(expected)}\n"
                    f"agent log:\n{self.agent.stderr}"
                )
            time.sleep(0.05)

    def row(self, request_id: str, timeout: float = 10) -> sqlite3.Row:
        """The history row of one request (rows are written in batches)."""
        return self.first_row("id", request_id, timeout)

    def first_row(self, column: str, value: str, timeout: float = 10) -> sqlite3.Row:
        """The first history row whose ``column`` is ``value``, once written."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.hub.query(f"SELECT * FROM requests WHERE {column} = ?", value)
            if rows:
                return rows[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no history row with {column} {value!r}")
            time.sleep(0.05)


@contextmanager
def start_stack(
    workdir: Path,
    services: list[dict[str, Any]],
    expected: set[tuple[str, str]],
    env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """A hub, user `alice` with a key, and an agent serving `services`, all ready."""
    workdir.mkdir(parents=True, exist_ok=True)
    with start_hub(workdir, env=env) as hub:
        key = hub.user_with_key("alice")
        manifest = workdir / "manifest.yaml"
        manifest.write_text(manifest_text(*services))
        agent = AgentProcess(
            [
                "run",
                "--manifest",
                str(manifest),
                "--hub",
                hub.url,
                "--key",
                key,
                "--listen",
                "127.0.0.1:0",
                "--name",
                "rig",
                "--heartbeat-interval",
                str(HEARTBEAT),
            ]
        )
        try:
            agent.wait_listening()
            agent.wait_registered()
            stack = Stack(hub, key, agent)
            stack.wait_listed(expected)
            yield stack
        finally:
            agent.kill()


def start_agent_process(
    hub: HubProcess,
    key: str,
    path: Path,
    *services: dict[str, Any],
    interval: float = 1.0,
    name: str = "home-rig",
) -> AgentProcess:
    agent = spawn_agent_process(hub, key, path, *services, interval=interval, name=name)
    agent.wait_listening()
    agent.wait_registered()
    return agent


def spawn_agent_process(
    hub: HubProcess,
    key: str,
    path: Path,
    *services: dict[str, Any],
    interval: float = 1.0,
    name: str = "home-rig",
) -> AgentProcess:
    """`start_agent_process` without the wait: several agents start at once, then each is
    waited for (their start-up is mostly Python importing, which overlaps)."""
    path.write_text(manifest_text(*services))
    return AgentProcess(
        [
            "run",
            "--manifest",
            str(path),
            "--hub",
            hub.url,
            "--key",
            key,
            "--listen",
            "127.0.0.1:0",
            "--name",
            name,
            "--heartbeat-interval",
            str(interval),
        ]
    )


def model_ids(sdk: openai.OpenAI) -> set[str]:
    return {m.id for m in sdk.models.list().data}


def wait_models(sdk: openai.OpenAI, expected: set[str], timeout: float = 15) -> float:
    """Seconds until the hub lists exactly `expected`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if model_ids(sdk) == expected:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"hub lists {model_ids(sdk)}, not {expected}")
