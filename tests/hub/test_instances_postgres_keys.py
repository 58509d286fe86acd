"""Key scopes and provider name ownership across two hub processes on PostgreSQL (as on two
machines): each hub's in-memory registry and key cache may be behind the other's, so the name
belongs to its key in the store, and key changes reach both hubs through LISTEN/NOTIFY (the
timers are set to 30 s here)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from tests.support.fakes.agent import FakeAgent
from tests.support.hubproc import HubProcess, two_hubs_on_postgres
from tests.support.postgres import pg_schema

pytestmark = [pytest.mark.postgres, pytest.mark.subprocess]

LLM = [{"name": "chat", "type": "llm", "engine": "vllm", "models": ["m1"]}]


def _within(seconds: float, cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, f"not within {seconds} s"
        time.sleep(0.05)


def _refused(client: openai.OpenAI) -> bool:
    try:
        client.models.list()
    except openai.AuthenticationError:
        return True
    return False


def _chat(hub: HubProcess, key: str) -> None:
    with openai.OpenAI(base_url=hub.api_base, api_key=key, max_retries=0) as client:
        assert client.chat.completions.create(model="m1", messages=[]).choices


def test_a_provider_name_stays_with_its_key_on_every_hub(tmp_path: Path) -> None:
    with pg_schema() as dsn, two_hubs_on_postgres(tmp_path, dsn) as (first, second):
        rig_key = first.user_with_key("alice")
        other_key = first.create_key("alice")
        app_key = first.cli("keys", "create", "alice", "--scope", "inference").stdout
        app_key = app_key.strip().splitlines()[-1]
        with (
            FakeAgent(["m1"]) as rig,
            FakeAgent(["m1"]) as attacker,
            openai.OpenAI(base_url=second.api_base, api_key=rig_key, max_retries=0) as via_b,
        ):
            assert first.heartbeat(rig_key, "rig", rig.url, LLM)[0] == 200
            _within(2, lambda: [m.id for m in via_b.models.list().data] == ["m1"])
            status, body = second.heartbeat(other_key, "rig", attacker.url, LLM)
            assert status == 409 and body["error"]["code"] == "provider_name_taken"
            status, body = second.heartbeat(app_key, "rig", attacker.url, LLM)
            assert status == 403 and body["error"]["code"] == "insufficient_scope"
            _chat(first, app_key)
            _chat(second, app_key)
            assert len(rig.posts("/v1/chat/completions")) == 2
            assert attacker.posts("/v1/chat/completions") == []

            # Rotated on the CLI: the old key is refused by the other hub within a
            # few seconds (NOTIFY, not its 30 s timer), and the new key keeps the name there.
            rotated = first.cli("keys", "rotate", rig_key[:11]).stdout
            new_key = rotated.strip().splitlines()[-1]
            _within(3, lambda: _refused(via_b))
            assert second.heartbeat(new_key, "rig", rig.url, LLM)[0] == 200
            assert second.heartbeat(other_key, "rig", attacker.url, LLM)[0] == 409

            # Revoked: any other key of alice's may take the name, on any hub.
            first.cli("keys", "revoke", new_key[:11])
            status, body = second.heartbeat(other_key, "rig", attacker.url, LLM)
            assert status == 200, body
            _within(2, lambda: _routes_to(first, app_key, attacker))


def _routes_to(hub: HubProcess, key: str, agent: FakeAgent) -> bool:
    before = len(agent.posts("/v1/chat/completions"))
    _chat(hub, key)
    return len(agent.posts("/v1/chat/completions")) > before
