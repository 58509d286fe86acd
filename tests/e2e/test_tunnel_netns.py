"""An agent behind NAT, for real: the agent and its engines in their own network namespace, which
the hub cannot connect into (tests/support/netns.py), the hub in the root namespace.

A plain callback-mode agent there registers, but the hub says it cannot reach it and requests
fail. With `--tunnel` the same agent serves chat, streams, uploads and speech through the one
WebSocket it dialled, a client's cancel reaches the engine, SIGTERM ends cleanly, and a tunnel
that dies mid-stream fails its stream, takes the provider offline and is dialled again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from inferclub.testing import AgentProcess, manifest_text
from tests.support.fakes import FakeSpeaches, FakeVllm
from tests.support.hubproc import HubProcess, start_hub
from tests.support.netns import NetNs, agent_namespace, needs_netns
from tests.support.stack import wait_models

pytestmark = [pytest.mark.subprocess, needs_netns]

QWEN = "Qwen/Qwen3-8B"
WHISPER = "Systran/faster-whisper-small"
KOKORO = "speaches-ai/Kokoro-82M-v1.0-ONNX"
MODELS = {QWEN, "whisper-small", "kokoro"}
#: The hub's tunnel ping interval here: a silent tunnel is closed within two.
PING = 2.0
HI = [{"role": "user", "content": "hi"}]


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
        #: Each scenario's agent belongs to a user of its own, so no test's provider (gone
        #: or going) is a candidate for another test's requests.
        self.keys: dict[str, str] = {}

    def key(self, login: str) -> str:
        if login not in self.keys:
            self.keys[login] = self.hub.user_with_key(login)
        return self.keys[login]

    def client(self, login: str, timeout: float = 30) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.hub.api_base, api_key=self.key(login), max_retries=0, timeout=timeout
        )

    def agent(self, fakes: NsFakes, login: str, *flags: str) -> AgentProcess:
        """``login``'s agent inside the namespace, with a provider name of its own."""
        manifest = self.workdir / f"{login}.yaml"
        manifest.write_text(manifest_text(*fakes.services()))
        args = ["run", "--manifest", str(manifest), "--hub", self.hub.url]
        args += ["--key", self.key(login), "--name", f"{login}-rig"]
        args += ["--heartbeat-interval", "1", *flags]
        return AgentProcess(args, prefix=self.ns.exec_prefix)

    def tunnel_agent(self, fakes: NsFakes, login: str) -> AgentProcess:
        """``login``'s agent with ``--tunnel``, once the hub lists its models."""
        agent = self.agent(fakes, login, "--tunnel")
        try:
            agent.wait_registered()
            with self.client(login) as sdk:
                wait_models(sdk, MODELS)
        except BaseException:
            agent.kill()
            raise
        return agent


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
    env = {
        # The namespace drops the hub's SYNs: a probe or a request waits out this timeout.
        "INFERCLUB_CONNECT_TIMEOUT": "1",
        "INFERCLUB_TUNNEL_PING_INTERVAL": str(PING),
    }
    with start_hub(workdir, "--host", tunnel_ns.hub_address, env=env) as hub:
        yield NsHub(hub, tunnel_ns, workdir)


def test_a_callback_agent_behind_the_namespace_is_not_reachable(
    ns_hub: NsHub, ns_fakes: NsFakes
) -> None:
    # Listening on all its addresses, as at home.
    agent = ns_hub.agent(ns_fakes, "bob", "--listen", "0.0.0.0:0")
    try:
        agent.wait_listening()
        warning = agent.wait_log("the hub cannot reach this agent", timeout=20)
        assert ns_hub.ns.agent_address in warning and "no answer in time" in warning
        with ns_hub.client("bob") as sdk:
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


# -- through the tunnel ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alice_tunnel(ns_hub: NsHub, ns_fakes: NsFakes) -> Iterator[AgentProcess]:
    agent = ns_hub.tunnel_agent(ns_fakes, "alice")
    yield agent
    agent.kill()


@pytest.fixture
def alice_sdk(ns_hub: NsHub, alice_tunnel: AgentProcess) -> Iterator[openai.OpenAI]:
    with ns_hub.client("alice") as sdk:
        yield sdk


@pytest.fixture
def slow_chat(ns_fakes: NsFakes) -> Iterator[FakeVllm]:
    """The chat engine streaming 200 chunks 50 ms apart, for the length of one test."""
    chat = ns_fakes.chat
    chat.chunks, chat.chunk_delay = 200, 0.05
    yield chat
    chat.chunks, chat.chunk_delay = 5, 0.0


def test_chat_through_the_tunnel(alice_sdk: openai.OpenAI, ns_fakes: NsFakes) -> None:
    before = len(ns_fakes.chat.posts("/v1/chat/completions"))
    raw = alice_sdk.chat.completions.with_raw_response.create(model=QWEN, messages=HI)
    reply = raw.parse()
    assert reply.choices[0].message.content
    assert raw.headers["x-inferclub-provider"] == "alice-rig"
    sent = ns_fakes.chat.posts("/v1/chat/completions")
    assert len(sent) == before + 1 and sent[-1].json()["messages"] == HI


def test_a_streamed_chat_through_the_tunnel(alice_sdk: openai.OpenAI, ns_fakes: NsFakes) -> None:
    stream = alice_sdk.chat.completions.create(model=QWEN, messages=HI, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([p for p in pieces if p]) == ns_fakes.chat.chunks
    assert ns_fakes.chat.completed_streams >= 1


def test_a_transcription_upload_larger_than_a_window(
    alice_sdk: openai.OpenAI, ns_fakes: NsFakes
) -> None:
    audio = b"RIFF" + os.urandom(1_000_000)  # four times the tunnel's initial window
    text = alice_sdk.audio.transcriptions.create(model="whisper-small", file=("a.wav", audio))
    assert text.text == "Hello from the fake speaches."
    sent = ns_fakes.speaches.posts("/v1/audio/transcriptions")[-1]
    assert audio in sent.body  # every byte arrived, in order


def test_speech_through_the_tunnel(alice_sdk: openai.OpenAI, ns_fakes: NsFakes) -> None:
    speech = alice_sdk.audio.speech.create(model="kokoro", voice="af_heart", input="Hello.")
    assert speech.content == ns_fakes.speaches.audio


def test_a_client_cancel_reaches_the_engine(alice_sdk: openai.OpenAI, slow_chat: FakeVllm) -> None:
    slow_chat.disconnects.clear()
    completed = slow_chat.completed_streams
    stream = alice_sdk.chat.completions.create(model=QWEN, messages=HI, stream=True)
    next(iter(stream))
    closed_at = time.monotonic()
    stream.close()
    waited = slow_chat.seconds_until_disconnect(closed_at)
    assert waited is not None, "the engine never saw the client leave"
    assert waited < 2.0  # the promise is 1 s; the rest is slack for a loaded machine
    assert slow_chat.completed_streams == completed


def test_sigterm_finishes_the_stream_and_takes_the_provider_offline(
    ns_hub: NsHub, ns_fakes: NsFakes
) -> None:
    chat = ns_fakes.chat
    chat.chunks, chat.chunk_delay = 20, 0.05
    agent = ns_hub.tunnel_agent(ns_fakes, "carol")
    try:
        with ns_hub.client("carol") as sdk:
            stream = sdk.chat.completions.create(model=QWEN, messages=HI, stream=True)
            chunks = iter(stream)
            seen = [next(chunks)]
            agent.proc.send_signal(signal.SIGTERM)
            # In flight when SIGTERM came: it runs to its end, or ends with an error the SDK
            # raises; never a hang or a silently truncated answer.
            try:
                seen += list(chunks)
                words = [c for c in seen if c.choices and c.choices[0].delta.content]
                assert len(words) == chat.chunks
            except openai.APIError:
                pass
            # It said goodbye: offline at once, not after the 60 s online window.
            wait_models(sdk, set(), timeout=5)
            assert agent.wait(30) == 0
    finally:
        chat.chunks, chat.chunk_delay = 5, 0.0
        agent.kill()


def test_a_tunnel_cut_mid_stream(ns_hub: NsHub, ns_fakes: NsFakes, slow_chat: FakeVllm) -> None:
    """The veth link goes down under a stream: no FIN, no RST, only the hub's pings notice."""
    agent = ns_hub.tunnel_agent(ns_fakes, "dave")
    link = ns_hub.ns.host_link
    try:
        with ns_hub.client("dave") as sdk:
            stream = sdk.chat.completions.create(model=QWEN, messages=HI, stream=True)
            chunks = iter(stream)
            next(chunks)
            subprocess.run(["ip", "link", "set", link, "down"], check=True)
            cut_at = time.monotonic()
            with pytest.raises(openai.APIError) as err:
                for _ in chunks:
                    pass
            # The stream's final error event, OpenAI-shaped, says what happened.
            assert "connection to the provider broke" in str(err.value), err.value
            wait_models(sdk, set(), timeout=10)
            offline_after = time.monotonic() - cut_at
            subprocess.run(["ip", "link", "set", link, "up"], check=True)
            # The same agent dials again (backoff with jitter) once the hub is reachable.
            wait_models(sdk, MODELS, timeout=30)
            reply = sdk.chat.completions.create(model=QWEN, messages=HI)
            assert reply.choices[0].message.content
        # Two ping intervals, and slack for a loaded machine (the online window is 60 s).
        assert offline_after < 2 * PING + 2
    finally:
        subprocess.run(["ip", "link", "set", link, "up"], check=False)
        agent.kill()


def test_an_agent_killed_and_restarted_reconnects(ns_hub: NsHub, ns_fakes: NsFakes) -> None:
    agent = ns_hub.tunnel_agent(ns_fakes, "erin")
    agent.proc.send_signal(signal.SIGKILL)
    agent.kill()
    with ns_hub.client("erin") as sdk:
        wait_models(sdk, set(), timeout=2 * PING + 2)
        again = ns_hub.tunnel_agent(ns_fakes, "erin")
        try:
            reply = sdk.chat.completions.create(model=QWEN, messages=HI)
            assert reply.choices[0].message.content
        finally:
            again.kill()
