"""What the providers page is told about each service: the agent's last report while the
provider is online, and "unknown" (never a green "up") once it is offline."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.fakes.agent import FakeAgent
from tests.support.fakes.github import FakeGitHub
from tests.support.hubthread import hub_in_thread
from tests.support.web import WebClient

SERVICES = [
    {"name": "chat", "type": "llm", "engine": "vllm", "models": ["m1"]},
    {"name": "asr", "type": "stt", "engine": "openai", "models": ["w"]},
    {"name": "quiet", "type": "tts", "engine": "openai", "models": ["v"]},
]
HEALTH = {"services": {"chat": {"up": True, "detail": "ok"}, "asr": {"up": False}}}


def states(web: WebClient) -> dict[str, str | None]:
    (provider,) = web.get("/dashboard/api/providers").json()["providers"]
    return {
        s["name"]: s["state"] for group in provider["services_by_type"] for s in group["services"]
    }


def test_service_states_follow_the_provider_going_offline(
    tmp_path: Path, github: FakeGitHub
) -> None:
    env = {**github.hub_env(), "INFERCLUB_ONLINE_WINDOW": "0.5"}
    with hub_in_thread(tmp_path, env=env) as hub, FakeAgent(["m1"]) as agent:
        web = WebClient(hub.url)
        web.github_sign_in(github)
        key = hub.create_key("@octocat")
        status, body = hub.heartbeat(key, "rig", agent.url, SERVICES, health=HEALTH)
        assert status == 200, body
        assert states(web) == {"chat": "up", "asr": "down", "quiet": None}

        deadline = time.monotonic() + 10
        while web.get("/dashboard/api/providers").json()["providers"][0]["online"]:
            assert time.monotonic() < deadline, "the provider never went offline"
            time.sleep(0.1)
        assert states(web) == {"chat": "unknown", "asr": "unknown", "quiet": None}
