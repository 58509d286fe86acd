"""Agents behind NAT: the agent dials the hub (`run --tunnel`) and serves every request over
that one WebSocket. The openai SDK -> the real hub -> the real agent (subprocesses) -> a fake
vLLM; the agent listens on loopback only."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from inferclub.testing import AgentProcess
from tests.support.fakes import FakeVllm
from tests.support.hubproc import HubProcess, start_hub
from tests.support.stack import wait_models
from tests.support.tunnel import start_tunnel_agent

pytestmark = pytest.mark.subprocess

#: Short, so that a lost tunnel is noticed quickly (the default is 10 s).
PING = "0.5"


@dataclass
class Tunnelled:
    hub: HubProcess
    key: str
    agent: AgentProcess
    engine: FakeVllm

    def client(self, timeout: float = 30) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.hub.api_base, api_key=self.key, max_retries=0, timeout=timeout
        )


@pytest.fixture
def tunnelled(tmp_path: Path) -> Iterator[Tunnelled]:
    engine = FakeVllm(["m1"]).start()
    agent: AgentProcess | None = None
    try:
        with start_hub(tmp_path, env={"INFERCLUB_TUNNEL_PING_INTERVAL": PING}) as hub:
            key = hub.user_with_key("alice")
            service = {"name": "chat", "engine": "vllm", "url": engine.url}
            agent = start_tunnel_agent(hub, key, tmp_path / "agent.yaml", service)
            setup = Tunnelled(hub, key, agent, engine)
            with setup.client() as sdk:
                wait_models(sdk, {"m1"})
            yield setup
    finally:
        if agent is not None:
            agent.kill()
        engine.close()


def test_chat_stream_and_upload_through_the_tunnel(tunnelled: Tunnelled) -> None:
    # The agent's only listener is on loopback: the hub could never call it back.
    assert tunnelled.agent.url.startswith("http://127.0.0.1:")
    assert "through a tunnel" in tunnelled.agent.wait_log("agent 'home-rig'")
    with tunnelled.client() as sdk:
        chat = sdk.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "hi"}]
        )
        assert chat.choices[0].message.content
        streamed = sdk.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        assert text
        audio = io.BytesIO(b"RIFF" + bytes(3 * 1024 * 1024))
        audio.name = "speech.wav"
        transcript = sdk.audio.transcriptions.create(model="m1", file=audio)
        assert transcript.text == tunnelled.engine.transcript
    uploads = tunnelled.engine.posts("/v1/audio/transcriptions")
    assert len(uploads) == 1 and len(uploads[0].body) > 3 * 1024 * 1024
    log = tunnelled.agent.wait_log("tunnel connected to ws://")
    assert "rtt" in log
