"""The example engine plugin, tested the way a plugin author tests theirs: a tiny fake of the
server the plugin talks to, and the real agent running the plugin against the fake hub that
`inferclub.testing` provides.

In a plugin's own repository, ``pytest_plugins = ["inferclub.testing"]`` goes in the top-level
``conftest.py``. It is here instead because this directory is also part of inferclub's suite.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inferclub.testing import FakeHandler, FakeHub, FakeServer, StartAgent, manifest_text, run_cli

# inferclub's marker for tests that start processes (here, the agent), since its suite runs
# these tests too; a plugin's own suite does not need it.
pytestmark = pytest.mark.subprocess

pytest_plugins = ["inferclub.testing"]


class FakeExampleLM(FakeServer):
    """ExampleLM as the plugin's docstring describes it: `/ping`, `/api/models`, `/api/chat`."""

    def routes(self) -> list[Any]:
        args = {"fake": self}
        return [(r"/ping", Ping, args), (r"/api/models", Models, args), (r"/api/chat", Chat, args)]


class Ping(FakeHandler):
    def get(self) -> None:
        self.finish("pong")


class Models(FakeHandler):
    def get(self) -> None:
        ready = [{"name": "example-7b", "ready": True}, {"name": "example-70b", "ready": False}]
        self.send_json({"models": ready})


class Chat(FakeHandler):
    """OpenAI's chat shapes: a completion, or (``stream``) chunks then ``[DONE]``."""

    async def post(self) -> None:
        body = self.json_body()
        words = ["Hello", " from", " ExampleLM"]
        if not body.get("stream"):
            message = {"role": "assistant", "content": "".join(words)}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            self.send_json(
                {"object": "chat.completion", "model": body["model"], "choices": [choice]}
            )
            return
        chunks = [
            {
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}],
            }
            for w in words
        ]
        await self.stream_events(chunks, 0.0)


@pytest.fixture
def example_lm() -> Iterator[FakeExampleLM]:
    with FakeExampleLM() as server:
        yield server


def test_check_lists_only_ready_models(example_lm: FakeExampleLM, tmp_path: Path) -> None:
    path = tmp_path / "example.yaml"
    path.write_text(manifest_text({"name": "ex", "engine": "example", "url": example_lm.root}))
    check = run_cli("check", "--manifest", str(path), "--json")
    assert check.returncode == 0, check.stderr
    [row] = json.loads(check.stdout)["services"]
    assert row["up"] and row["models"] == ["example-7b"]


def test_the_agent_answers_chat_through_the_plugin(
    fake_hub: FakeHub, start_agent: StartAgent, example_lm: FakeExampleLM
) -> None:
    agent = start_agent({"name": "ex", "engine": "example", "url": example_lm.root})
    beat = fake_hub.wait_for(lambda b: bool(b["services"]))
    assert beat["services"][0]["engine"] == "example"
    assert beat["services"][0]["models"] == ["example-7b"]
    agent.wait_registered()

    chat = {"model": "example-7b", "messages": [{"role": "user", "content": "hi"}]}
    answer = fake_hub.proxy("POST", "/chat/completions", chat, service="ex")
    assert answer.status == 200, answer.body
    assert answer.json()["choices"][0]["message"]["content"] == "Hello from ExampleLM"

    streamed = fake_hub.proxy("POST", "/chat/completions", {**chat, "stream": True}, service="ex")
    assert streamed.status == 200
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in streamed.body.decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"]["content"] for e in events[:-1])
    assert text == "Hello from ExampleLM"
    # The plugin's path translation was used: ExampleLM's chat lives at /api/chat.
    assert [r.json()["model"] for r in example_lm.posts("/api/chat")] == ["example-7b"] * 2
