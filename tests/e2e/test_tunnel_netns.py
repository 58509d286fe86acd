"""An agent behind NAT, for real: the agent and its engines in their own network namespace, which
the hub cannot connect into (tests/support/netns.py), the hub in the root namespace.

A plain callback-mode agent there registers, but the hub says it cannot reach it and requests
fail. With `--tunnel` the same agent serves chat, streams, uploads and speech through the one
WebSocket it dialled, a client's cancel reaches the engine, SIGTERM ends cleanly, and a tunnel
that dies mid-stream fails its stream, takes the provider offline and is dialled again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from inferclub.testing import AgentProcess, manifest_text
from tests.support.fakes import FakeSpeaches, FakeVllm
from tests.support.hubproc import HubProcess, start_hub
from tests.support.netns import NetNs, agent_namespace, needs_netns
from tests.support.stack import model_ids, wait_models

pytestmark = [pytest.mark.subprocess, needs_netns]

QWEN = "Qwen/Qwen3-8B"
WHISPER = "Systran/faster-whisper-small"
KOKORO = "speaches-ai/Kokoro-82M-v1.0-ONNX"
MODELS = {QWEN, "whisper-small", "kokoro"}


class NsFakes:
    """The engines, listening on the namespace's own loopback."""

    def __init__(self) -> None:
        self.chat = FakeVllm([QWEN])
        self.speaches = FakeSpeaches()

    def services(self) -> list[dict[str, Any]]:
        return [
            {"name": "chat", "engine": "vllm", "url": self.chat.url},
            {
                "name": "stt",
                "type": "stt",
                "engine": "whisper",
                "url": self.speaches.url,
                "models": [{"id": WHISPER, "alias": "whisper-small"}],
            },
            {
                "name": "tts",
                "type": "tts",
                "engine": "openai",
                "url": self.speaches.url,
                "models": [{"id": KOKORO, "alias": "kokoro"}],
            },
        ]


class NsHub:
    """The hub in the root namespace, bound to its end of the veth pair, and a user's key."""

    def __init__(self, hub: HubProcess, ns: NetNs, workdir: Path) -> None:
        self.hub = hub
        self.ns = ns
        self.workdir = workdir
        self.key = hub.user_with_key("alice")

    def client(self, timeout: float = 30) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.hub.api_base, api_key=self.key, max_retries=0, timeout=timeout
        )

    def agent(self, fakes: NsFakes, name: str, *flags: str) -> AgentProcess:
        """An agent inside the namespace, listening on all its addresses (as at home)."""
        manifest = self.workdir / f"{name}.yaml"
        manifest.write_text(manifest_text(*fakes.services()))
        args = ["run", "--manifest", str(manifest), "--hub", self.hub.url, "--key", self.key]
        args += ["--name", name, "--listen", "0.0.0.0:0", "--heartbeat-interval", "1", *flags]
        return AgentProcess(args, prefix=self.ns.exec_prefix)


@pytest.fixture(scope="module")
def tunnel_ns() -> Iterator[NetNs]:
    with agent_namespace() as ns:
        yield ns


@pytest.fixture(scope="module")
def ns_fakes(tunnel_ns: NetNs) -> Iterator[NsFakes]:
    fakes = NsFakes()
    tunnel_ns.inside(fakes.chat.start)
    tunnel_ns.inside(fakes.speaches.start)
    yield fakes
    fakes.chat.close()
    fakes.speaches.close()


@pytest.fixture(scope="module")
def ns_hub(tunnel_ns: NetNs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NsHub]:
    workdir = tmp_path_factory.mktemp("tunnel-netns")
    # A short connect timeout: the namespace drops the hub's SYNs, so a probe waits it out.
    env = {"INFERCLUB_CONNECT_TIMEOUT": "1"}
    with start_hub(workdir, "--host", tunnel_ns.hub_address, env=env) as hub:
        yield NsHub(hub, tunnel_ns, workdir)


def test_a_callback_agent_behind_the_namespace_is_not_reachable(
    ns_hub: NsHub, ns_fakes: NsFakes
) -> None:
    agent = ns_hub.agent(ns_fakes, "behind-nat")
    try:
        agent.wait_listening()
        warning = agent.wait_log("the hub cannot reach this agent", timeout=20)
        assert ns_hub.ns.agent_address in warning and "no answer in time" in warning
        with ns_hub.client() as sdk:
            wait_models(sdk, MODELS)  # registered: its heartbeats reach the hub
            with pytest.raises(openai.APIStatusError) as err:
                sdk.chat.completions.create(
                    model=QWEN, messages=[{"role": "user", "content": "hi"}]
                )
        # The namespace drops the hub's SYN, as NAT does: the connect times out.
        assert err.value.status_code == 504
        assert err.value.code == "upstream_timeout"
        assert "Could not connect to" in err.value.message
        assert ns_fakes.chat.posts("/v1/chat/completions") == []
    finally:
        agent.kill()
    with ns_hub.client() as sdk:
        assert model_ids(sdk) <= MODELS
