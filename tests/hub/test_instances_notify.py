"""Two hub processes on PostgreSQL (as on two machines) hear each other through LISTEN/NOTIFY,
not through their timers (set to 30 s here): a heartbeat to one routes from the other, and a CLI
revocation is refused by both, each within 1 s while both serve load."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from tests.support.fakes.agent import FakeAgent
from tests.support.hubproc import HubProcess
from tests.support.postgres import pg_schema

pytestmark = [pytest.mark.postgres, pytest.mark.subprocess]

LLM = [{"name": "chat", "type": "llm", "engine": "vllm", "models": ["m1"]}]


def _within(seconds: float, cond: Callable[[], bool]) -> float:
    """How long ``cond`` took to come true (polled), failing past ``seconds``."""
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < seconds, f"not within {seconds} s"
        time.sleep(0.02)
    return time.monotonic() - start


def _refused(client: openai.OpenAI) -> bool:
    try:
        client.models.list()
    except openai.AuthenticationError:
        return True
    return False


def _load(clients: list[openai.OpenAI], stop: threading.Event, served: list[int]) -> None:
    """Chats through every hub until ``stop``; counts the answered ones."""
    while not stop.is_set():
        for client in clients:
            try:
                client.chat.completions.create(model="m1", messages=[])
                served.append(1)
            except openai.APIError:
                time.sleep(0.01)


def test_heartbeats_and_revocations_reach_the_other_hub_within_a_second(tmp_path: Path) -> None:
    with pg_schema() as dsn:
        env = {
            "INFERCLUB_REGISTRY_REFRESH": "30",
            "INFERCLUB_KEY_CACHE_REFRESH": "30",
            "INFERCLUB_SECRETS_FILE": str(tmp_path / "secrets.json"),
        }
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        first = HubProcess(tmp_path / "a", env=env, db=dsn).start()
        second = HubProcess(tmp_path / "b", env=env, db=dsn).start()
        stop = threading.Event()
        try:
            key = first.user_with_key("alice")
            with (
                FakeAgent(["m1"]) as agent,
                openai.OpenAI(base_url=first.api_base, api_key=key, max_retries=0) as via_a,
                openai.OpenAI(base_url=second.api_base, api_key=key, max_retries=0) as via_b,
            ):
                assert via_b.models.list().data == []
                assert first.heartbeat(key, "rig", agent.url, LLM)[0] == 200
                _within(1.0, lambda: [m.id for m in via_b.models.list().data] == ["m1"])

                served: list[int] = []
                loaders = [
                    threading.Thread(target=_load, args=([via_a, via_b], stop, served))
                    for _ in range(2)
                ]
                for t in loaders:
                    t.start()
                try:
                    _within(5.0, lambda: len(served) > 20)
                    first.cli("keys", "revoke", "1")
                    _within(1.0, lambda: _refused(via_a) and _refused(via_b))
                finally:
                    stop.set()
                    for t in loaders:
                        t.join(10)
        finally:
            assert second.stop() == 0
            assert first.stop() == 0
