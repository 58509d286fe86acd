"""A small fleet end to end: the openai SDK -> the real hub -> three real agents (all
subprocesses) -> one fake engine each, every agent serving the same model. What a user with
a few machines sees when one of them dies, stops, slows down or loses its engine."""

from __future__ import annotations

import collections
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from inferclub.testing import AgentProcess
from tests.support.fakes import FakeVllm
from tests.support.hubproc import HubProcess, start_hub
from tests.support.stack import spawn_agent_process, wait_models

pytestmark = pytest.mark.subprocess

NAMES = ("rig-1", "rig-2", "rig-3")


@dataclass
class Fleet:
    hub: HubProcess
    key: str
    agents: dict[str, AgentProcess]
    engines: dict[str, FakeVllm]

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.hub.api_base, api_key=self.key, max_retries=0)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    engines = {name: FakeVllm(["m1"]).start() for name in NAMES}
    for engine in engines.values():
        engine.chunks, engine.chunk_delay = 4, 0.05
    agents: dict[str, AgentProcess] = {}
    try:
        with start_hub(tmp_path) as hub:
            key = hub.user_with_key("alice")
            for name in NAMES:
                service = {"name": "chat", "engine": "vllm", "url": engines[name].url}
                agents[name] = spawn_agent_process(
                    hub, key, tmp_path / f"{name}.yaml", service, name=name
                )
            for agent in agents.values():
                agent.wait_listening()
                agent.wait_registered()
            fleet = Fleet(hub, key, agents, engines)
            with fleet.client() as sdk:
                wait_models(sdk, {"m1"})
            yield fleet
    finally:
        for agent in agents.values():
            agent.kill()
        for engine in engines.values():
            engine.close()


def stream(sdk: openai.OpenAI) -> tuple[str, str]:
    """One streamed chat: (the provider that served, its request id). Raises on an error
    before the first byte (APIStatusError) or after it (APIError)."""
    with sdk.chat.completions.with_streaming_response.create(
        model="m1", messages=[{"role": "user", "content": "hi"}], stream=True
    ) as resp:
        provider = resp.headers["X-InferClub-Provider"]
        for _ in resp.parse():
            pass
        return provider, resp.headers["X-Request-Id"]


class Load:
    """``clients`` threads streaming chats until stopped: who served, what failed."""

    def __init__(self, fleet: Fleet, clients: int) -> None:
        self.fleet = fleet
        self.served: collections.Counter[str] = collections.Counter()
        self.refused: list[str] = []  # errors before the first byte
        self.cut: list[str] = []  # errors after it
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self) -> None:
        with self.fleet.client() as sdk:
            while not self._stop.is_set():
                try:
                    provider, _ = stream(sdk)
                    self.served[provider] += 1
                except openai.APIStatusError as exc:
                    self.refused.append(f"{exc.status_code} {exc.message}")
                except openai.APIError as exc:
                    self.cut.append(exc.message)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


def test_kill_9_under_load_fails_no_request_that_had_not_started(fleet: Fleet) -> None:
    with Load(fleet, clients=4) as load:
        time.sleep(1.5)
        fleet.agents["rig-2"].proc.send_signal(signal.SIGKILL)
        before = sum(load.served.values())
        time.sleep(2.5)
    assert not load.refused, load.refused
    # Only streams that rig-2 had begun may break (at most one per client).
    assert len(load.cut) <= 4
    assert sum(load.served.values()) > before  # the other two kept serving


def test_sigterm_stops_routing_to_the_agent_within_a_second(fleet: Fleet) -> None:
    # rig-3 is busy with a slow stream, so it drains (and stays up) after its SIGTERM.
    fleet.engines["rig-3"].chunk_delay = 1.0
    with fleet.client() as sdk:
        busy = [threading.Thread(target=stream, args=(sdk,)) for _ in range(3)]
        for t in busy:  # one stream each: rig-3 takes one
            t.start()
        time.sleep(0.5)
        fleet.agents["rig-3"].proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        served = [stream(sdk)[0] for _ in range(10)]
        raws = [
            sdk.chat.completions.with_raw_response.create(model="m1", messages=[]) for _ in range(3)
        ]
        for t in busy:
            t.join(30)
    assert "rig-3" not in served
    # Straight to the others: not a failed attempt at rig-3 first.
    assert {r.headers["X-InferClub-Attempts"] for r in raws} == {"1"}
    assert "is shutting down" in fleet.hub.log()


def test_a_twice_as_slow_agent_gets_the_fewest_requests(fleet: Fleet) -> None:
    fleet.engines["rig-1"].chunk_delay = 0.1  # the others: 0.05
    with Load(fleet, clients=6) as load:
        time.sleep(4)
    total = sum(load.served.values())
    assert not load.refused and not load.cut
    assert load.served["rig-1"] < total / 3, load.served
    assert load.served["rig-1"] < min(load.served["rig-2"], load.served["rig-3"])


def test_engines_down_behind_live_agents_is_503_then_200_when_they_return(
    fleet: Fleet,
) -> None:
    for engine in fleet.engines.values():
        engine.stop()
    deadline = time.monotonic() + 15
    with fleet.client() as sdk:
        while True:
            try:
                stream(sdk)
            except openai.APIStatusError as exc:
                assert exc.response.headers["X-Request-Id"].startswith("req_")
                if exc.code == "model_unavailable" and "engine down" in exc.message:
                    assert exc.status_code == 503
                    assert exc.response.headers["Retry-After"]
                    break
            assert time.monotonic() < deadline, "no 503 model_unavailable"
            time.sleep(0.2)
        for engine in fleet.engines.values():
            engine.start()
        deadline = time.monotonic() + 15
        while True:
            try:
                assert stream(sdk)[0] in NAMES
                break
            except openai.APIStatusError as exc:
                assert exc.status_code == 503, exc.message
            assert time.monotonic() < deadline, "not served again"
            time.sleep(0.2)
