"""Two hub processes sharing one store route alike: keys and providers are not per process."""

from __future__ import annotations

import time
from pathlib import Path

import openai
import pytest

from tests.support.fakes.agent import FakeAgent
from tests.support.hubproc import HubProcess

pytestmark = pytest.mark.subprocess

LLM = [{"name": "chat", "type": "llm", "engine": "vllm", "models": ["m1"]}]


def test_a_second_instance_routes_providers_that_beat_to_the_first(tmp_path: Path) -> None:
    env = {"INFERCLUB_REGISTRY_REFRESH": "0.2"}
    first = HubProcess(tmp_path, env=env).start()
    second = HubProcess(tmp_path, env=env).start()  # same directory: same database and secrets
    try:
        key = first.user_with_key("alice")
        with (
            FakeAgent(["m1"]) as agent,
            openai.OpenAI(base_url=second.api_base, api_key=key, max_retries=0) as c,
        ):
            assert first.heartbeat(key, "rig", agent.url, LLM)[0] == 200
            deadline = time.monotonic() + 5
            while not c.models.list().data and time.monotonic() < deadline:
                time.sleep(0.05)
            assert [m.id for m in c.models.list().data] == ["m1"]
            assert c.chat.completions.create(model="m1", messages=[]).choices
            assert len(agent.posts("/v1/chat/completions")) == 1
            rows = second.wait_for_request_rows(1)
            assert rows[-1]["provider_id"] == 1 and rows[-1]["status"] == 200
    finally:
        assert second.stop() == 0
        assert first.stop() == 0
