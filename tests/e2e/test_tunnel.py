"""Agents behind NAT: the agent dials the hub (`run --tunnel`) and serves every request over
that one WebSocket. The openai SDK -> the real hub -> the real agent (subprocesses) -> a fake
vLLM; the agent listens on loopback only."""

from __future__ import annotations

import http.client
import io
import json
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest

from inferclub import tunnel
from inferclub.testing import AgentProcess, manifest_text
from tests.support.fakes import FakeSpeaches, FakeVllm
from tests.support.hubproc import HubProcess, start_hub
from tests.support.stack import wait_models
from tests.support.tunnel import start_tunnel_agent

pytestmark = pytest.mark.subprocess

KOKORO = "speaches-ai/Kokoro-82M-v1.0-ONNX"
#: Short, so that a lost tunnel is noticed quickly (the default is 10 s).
#: The hub's ping interval here. Not shorter: on a loaded CI machine an agent busy with its
#: SIGTERM missed two 0.5 s pongs, and the hub rightly closed the tunnel under its last stream.
PING = "2"
ONLINE = "provider 'home-rig' of alice online through its tunnel (rtt "


@dataclass
class Tunnelled:
    hub: HubProcess
    key: str
    agent: AgentProcess
    engine: FakeVllm
    asr: FakeVllm

    def client(self, timeout: float = 30) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.hub.api_base, api_key=self.key, max_retries=0, timeout=timeout
        )


@pytest.fixture
def tunnelled(tmp_path: Path) -> Iterator[Tunnelled]:
    engine, asr = FakeVllm(["m1"]).start(), FakeVllm(["asr1"]).start()
    agent: AgentProcess | None = None
    try:
        with start_hub(tmp_path, env={"INFERCLUB_TUNNEL_PING_INTERVAL": PING}) as hub:
            key = hub.user_with_key("alice")
            chat = {"name": "chat", "engine": "vllm", "url": engine.url}
            stt = {"name": "asr", "type": "stt", "engine": "vllm", "url": asr.url}
            agent = start_tunnel_agent(hub, key, tmp_path / "agent.yaml", chat, stt)
            setup = Tunnelled(hub, key, agent, engine, asr)
            with setup.client() as sdk:
                wait_models(sdk, {"m1", "asr1"})
            yield setup
    finally:
        if agent is not None:
            agent.kill()
        engine.close()
        asr.close()


def test_chat_stream_and_upload_through_the_tunnel(tunnelled: Tunnelled) -> None:
    # The agent's only listener is on loopback: the hub could never call it back.
    assert tunnelled.agent.url.startswith("http://127.0.0.1:")
    assert "through a tunnel" in tunnelled.agent.wait_log("agent 'home-rig'")
    with tunnelled.client() as sdk:
        chat = sdk.chat.completions.create(model="m1", messages=[{"role": "user", "content": "hi"}])
        assert chat.choices[0].message.content
        streamed = sdk.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        assert text
        audio = io.BytesIO(b"RIFF" + bytes(3 * 1024 * 1024))
        audio.name = "speech.wav"
        transcript = sdk.audio.transcriptions.create(model="asr1", file=audio)
        assert transcript.text == tunnelled.asr.transcript
    uploads = tunnelled.asr.posts("/v1/audio/transcriptions")
    assert len(uploads) == 1 and len(uploads[0].body) > 3 * 1024 * 1024
    log = tunnelled.agent.wait_log("tunnel connected to ws://")
    assert "rtt" in log


def open_stream(hub: HubProcess, key: str, path: str, body: dict[str, object]) -> Any:
    """A streamed request on a raw connection, its headers read: the test decides when to
    read on (or to leave)."""
    parts = urlsplit(hub.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    conn.request(
        "POST",
        path,
        body=json.dumps(body),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    return conn, resp


def test_a_client_that_leaves_closes_the_engine_connection(tunnelled: Tunnelled) -> None:
    engine = tunnelled.engine
    engine.chunks, engine.chunk_delay = 200, 0.05
    body = {"model": "m1", "messages": [], "stream": True}
    conn, resp = open_stream(tunnelled.hub, tunnelled.key, "/v1/chat/completions", body)
    assert resp.readline().startswith(b"data: ")
    closed_at = time.monotonic()
    conn.sock.close()
    conn.close()
    waited = engine.seconds_until_disconnect(closed_at)
    assert waited is not None, "the engine never saw the client leave"
    assert waited < 1.0, waited
    assert engine.completed_streams == 0
    assert "the hub cancelled stream" in tunnelled.agent.wait_log("the hub cancelled stream")


def test_a_lost_tunnel_fails_its_stream_and_the_agent_comes_back(
    tunnelled: Tunnelled, tmp_path: Path
) -> None:
    engine = tunnelled.engine
    engine.chunks, engine.chunk_delay = 200, 0.05
    with tunnelled.client() as sdk:
        stream = sdk.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        next(iter(stream))
        tunnelled.agent.proc.kill()  # kill -9: the tunnel drops mid-stream
        with pytest.raises(openai.APIError, match="broke before the answer was complete"):
            for _ in stream:
                pass
        wait_models(sdk, set(), timeout=5)  # at once, not after the 60 s online window
    tunnelled.agent.kill()
    service = {"name": "chat", "engine": "vllm", "url": engine.url}
    again = start_tunnel_agent(tunnelled.hub, tunnelled.key, tmp_path / "again.yaml", service)
    try:
        with tunnelled.client() as sdk:
            wait_models(sdk, {"m1"})
            chat = sdk.chat.completions.create(
                model="m1", messages=[{"role": "user", "content": "hi"}]
            )
            assert chat.choices[0].message.content
    finally:
        again.kill()


def test_a_tunnel_that_stops_answering_pings_is_closed(tunnelled: Tunnelled) -> None:
    agent = tunnelled.agent
    agent.proc.send_signal(signal.SIGSTOP)  # the socket stays open, nothing answers
    try:
        with tunnelled.client() as sdk:
            # Two ping intervals (4 s here), far below the online window (60 s).
            wait_models(sdk, set(), timeout=15)
    finally:
        agent.proc.send_signal(signal.SIGCONT)
    assert f"no pong for {2 * float(PING):g} s" in tunnelled.hub.log()
    # The agent finds its tunnel closed and dials again.
    agent.wait_log("tunnel lost:", timeout=15)
    with tunnelled.client() as sdk:
        wait_models(sdk, {"m1", "asr1"}, timeout=20)


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in {url}")


def test_a_slow_client_holds_the_agent_to_its_window(tmp_path: Path) -> None:
    speaches = FakeSpeaches().start()
    speaches.audio = bytes(range(256)) * (128 * 1024)  # 32 MiB: far past the windows
    speaches.audio_chunks = 512
    total = len(speaches.audio)
    agent: AgentProcess | None = None
    conn: http.client.HTTPConnection | None = None
    try:
        with start_hub(tmp_path) as hub:
            key = hub.user_with_key("alice")
            tts = {"name": "tts", "type": "tts", "engine": "openai", "url": speaches.url}
            extra = ("--metrics-listen", "127.0.0.1:0")
            agent = start_tunnel_agent(hub, key, tmp_path / "a.yaml", tts, extra=extra)
            metrics = _metrics_url(agent)
            body = {"model": KOKORO, "input": "hi", "voice": "af_heart", "response_format": "wav"}
            conn, resp = open_stream(hub, key, "/v1/audio/speech", body)
            first = resp.read(1024)
            # The client reads no more: the agent's sent bytes stop growing, well short of
            # the answer, and no stream ever had more than a window unacknowledged.
            sent = settled(lambda: metric(metrics, "inferclub_agent_tunnel_sent_bytes_total"))
            assert sent < total / 2, sent
            peak = metric(metrics, "inferclub_agent_tunnel_unacked_peak_bytes")
            assert 0 < peak <= tunnel.INITIAL_WINDOW
            # (Whether the engine has finished says nothing about the agent: a loopback
            # socket's receive buffer may grow to net.ipv4.tcp_rmem's maximum, 32 MiB on
            # some machines, and hold the whole answer in the kernel.)
            rest = resp.read()  # the client reads on: everything arrives
            assert len(first) + len(rest) == total
            assert speaches.completed_streams == 1
    finally:
        if conn is not None:
            conn.close()  # also when an assertion failed: no socket left to a later test
        if agent is not None:
            agent.kill()
        speaches.close()


def _metrics_url(agent: AgentProcess) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in agent.out:
            if line.startswith("metrics on "):
                return line.split()[-1]
        time.sleep(0.05)
    raise AssertionError(f"no metrics address:\n{agent.stdout}")


def settled(read: Callable[[], float], quiet: float = 1.0, timeout: float = 30) -> float:
    """``read()`` once it stopped changing for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    raise AssertionError(f"still changing after {timeout} s: {last}")


def test_sigterm_says_goodbye_and_lets_the_stream_finish(tunnelled: Tunnelled) -> None:
    engine = tunnelled.engine
    engine.chunks, engine.chunk_delay = 20, 0.1
    with tunnelled.client() as sdk:
        stream = sdk.chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = [next(iter(stream))]
        tunnelled.agent.proc.send_signal(signal.SIGTERM)
        tunnelled.agent.wait_log("told the hub this agent is leaving")
        with pytest.raises(openai.APIStatusError) as refused:
            sdk.chat.completions.create(model="m1", messages=[])
        assert refused.value.status_code == 503  # no new request goes to a leaving agent
        chunks += list(stream)  # the one in flight ends whole
    # The engine counts the stream once its last flush returns, in its own thread: the
    # client may read that last chunk first.
    deadline = time.monotonic() + 5
    while engine.completed_streams == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.completed_streams == 1 and len(chunks) > 2
    assert tunnelled.agent.wait(15) == 0
    # The hub's log says why the tunnel closed, in the agent's words (close code 1001).
    deadline = time.monotonic() + 10
    while "closed: agent shutting down" not in tunnelled.hub.log():
        assert time.monotonic() < deadline, tunnelled.hub.log()
        time.sleep(0.05)
    assert "tunnel lost" not in tunnelled.agent.stderr  # nothing to reconnect: it is leaving


def test_an_inference_key_stops_a_tunnel_agent_with_exit_status_3(tmp_path: Path) -> None:
    with start_hub(tmp_path) as hub:
        hub.create_user("alice")
        out = hub.cli("keys", "create", "alice", "--scope", "inference").stdout
        key = out.strip().splitlines()[-1]
        manifest = tmp_path / "m.yaml"
        manifest.write_text(manifest_text({"name": "v", "engine": "vllm", "url": "http://h/v1"}))
        agent = AgentProcess(
            ["run", "--tunnel", "--manifest", str(manifest), "--hub", hub.url, "--key", key]
        )
        try:
            assert agent.wait(30) == 3, "restarting would not help"
        finally:
            agent.kill()
        assert "API key rejected by the hub (HTTP 403 insufficient_scope from ws://" in agent.stderr
        assert "scope does not allow running an agent" in agent.stderr
        assert key not in agent.stderr + agent.stdout


def test_a_hub_that_went_away_is_named_as_the_hub_in_the_agent_log(tmp_path: Path) -> None:
    with start_hub(tmp_path) as hub:
        key = hub.user_with_key("alice")
    # The hub stopped: the agent's heartbeats fail, and its log must not blame the engine.
    manifest = tmp_path / "m.yaml"
    manifest.write_text(manifest_text({"name": "v", "engine": "vllm", "url": "http://h/v1"}))
    agent = AgentProcess(
        ["run", "--tunnel", "--manifest", str(manifest), "--hub", hub.url, "--key", key]
    )
    try:
        line = agent.wait_log("tunnel lost: ")
        deadline = time.monotonic() + 20
        while agent.stderr.count("tunnel lost: ") < 3:  # a few seconds of retries
            assert time.monotonic() < deadline, agent.stderr
            time.sleep(0.1)
    finally:
        agent.kill()
    assert f"tunnel lost: cannot connect to {urlsplit(hub.url).netloc}" in line
    assert "engine" not in line
    # The tunnel's lines say it all: no heartbeat warning beside each (one came on every
    # start too, before the tunnel had connected).
    assert "heartbeat to " not in agent.stderr


def test_a_hub_that_stops_closes_its_tunnels_and_says_why(tmp_path: Path) -> None:
    engine = FakeVllm(["m1"]).start()
    agent: AgentProcess | None = None
    try:
        with start_hub(tmp_path) as hub:
            key = hub.user_with_key("alice")
            chat = {"name": "chat", "engine": "vllm", "url": engine.url}
            agent = start_tunnel_agent(hub, key, tmp_path / "agent.yaml", chat)
        # SIGTERM on leaving the block: the agent hears why, then finds the hub gone.
        lost = agent.wait_log("tunnel lost: ")
        assert "closed by the hub (1001: the hub is shutting down)" in lost
        again = agent.wait_log("tunnel lost: cannot connect to ")
        assert "(connection refused)" in again
        log = hub.log()
        assert "closing the tunnel of provider 'home-rig' of alice: the hub is shutting down" in log
        assert ONLINE in log
        assert (
            "provider 'home-rig' of alice offline: its tunnel closed (the hub is shutting down)"
            in (log)
        )
        # The hub comes back on its address: the agent dials in again, and the log says so.
        port = str(urlsplit(hub.url).port)
        with start_hub(tmp_path, "--port", port) as again:
            deadline = time.monotonic() + 30
            while again.log().count(ONLINE) < 2:
                assert time.monotonic() < deadline, "the agent's provider never came back"
                time.sleep(0.1)
    finally:
        if agent is not None:
            agent.kill()
        engine.close()
