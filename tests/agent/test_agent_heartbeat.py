"""Heartbeats, the run command's options, and shutdown."""

from __future__ import annotations

import http.client
import itertools
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from inferclub.testing import (
    KEY,
    AgentProcess,
    FakeHub,
    StartAgent,
    advertised,
    manifest_text,
)
from tests.support.agentstream import open_chat_stream
from tests.support.fakes import FakeOllama, FakeVllm

pytestmark = pytest.mark.subprocess


def test_first_heartbeat_describes_the_agent(
    start_agent: StartAgent, fake_hub: FakeHub, vllm: FakeVllm, ollama: FakeOllama
) -> None:
    agent = start_agent(
        {
            "name": "vllm-qwen",
            "engine": "vllm",
            "url": vllm.url,
            "models": [{"hf": "Qwen/Qwen3-8B", "alias": "qwen"}],
        },
        {"name": "ollama", "engine": "ollama", "url": ollama.url},
        {
            "name": "asr",
            "type": "stt",
            "engine": "vllm",
            "url": vllm.url,
            "features": ["timestamps"],
            "models": [{"id": "Qwen/Qwen3-8B"}],
        },
        args=("--name", "home-rig"),
    )
    beat = fake_hub.wait_for(lambda b: len(b["services"]) == 3)
    port = urlsplit(agent.url).port
    assert beat["name"] == "home-rig"
    assert beat["callback_url"] == f"http://127.0.0.1:{port}/v1"
    assert re.match(r"^\d+\.\d+", beat["version"])
    assert beat["services"] == [
        {"name": "vllm-qwen", "type": "llm", "engine": "vllm", "features": [], "models": ["qwen"]},
        {
            "name": "ollama",
            "type": "llm",
            "engine": "ollama",
            "features": [],
            "models": ["llama3.2:latest", "qwen3:8b"],
            "loaded": ["qwen3:8b"],  # Ollama's /api/ps: the hub prefers it for this model
        },
        {
            "name": "asr",
            "type": "stt",
            "engine": "vllm",
            "features": ["timestamps"],
            "models": ["Qwen/Qwen3-8B"],
        },
    ]
    health = beat["health"]
    assert health["agent_version"] == beat["version"]
    assert health["uptime_s"] >= 0
    assert health["in_flight"] == {"vllm-qwen": 0, "ollama": 0, "asr": 0}
    assert len(health["load_avg"]) == 3
    assert health["memory"]["total_bytes"] > health["memory"]["available_bytes"] > 0
    assert isinstance(health["gpus"], list)
    assert health["services"]["ollama"]["info"] == {"loaded": ["qwen3:8b"]}
    # The key went in the Authorization header, and nowhere in the logs.
    assert fake_hub.requests[0].headers["Authorization"] == f"Bearer {KEY}"
    assert KEY not in agent.stderr + agent.stdout


def test_down_services_are_not_advertised_until_they_come_back(
    start_agent: StartAgent, fake_hub: FakeHub, vllm: FakeVllm, ollama: FakeOllama
) -> None:
    agent = start_agent(
        {"name": "vllm-qwen", "engine": "vllm", "url": vllm.url},
        {"name": "ollama", "engine": "ollama", "url": ollama.url},
        interval=6,  # services are probed every 2 s; changes must not wait for the next beat
    )
    fake_hub.wait_for(lambda b: set(advertised(b)) == {"vllm-qwen", "ollama"})

    ollama.stop()
    stopped = time.monotonic()
    seen = len(fake_hub.beats)
    beat = fake_hub.wait_for(lambda b: set(advertised(b)) == {"vllm-qwen"}, timeout=15, after=seen)
    assert fake_hub.beats[-1][0] - stopped < 3.5
    assert beat["health"]["services"]["ollama"]["up"] is False
    assert "cannot connect" in beat["health"]["services"]["ollama"]["detail"]
    agent.wait_log("service ollama is down")

    ollama.start()
    started = time.monotonic()
    seen = len(fake_hub.beats)
    fake_hub.wait_for(
        lambda b: set(advertised(b)) == {"vllm-qwen", "ollama"}, timeout=15, after=seen
    )
    assert fake_hub.beats[-1][0] - started < 3.5
    agent.wait_log("service ollama is up")


def test_discovery_changes_are_announced(
    start_agent: StartAgent, fake_hub: FakeHub, ollama: FakeOllama
) -> None:
    start_agent({"name": "ollama", "engine": "ollama", "url": ollama.url}, interval=3)
    fake_hub.wait_for(lambda b: advertised(b).get("ollama") == ["llama3.2:latest", "qwen3:8b"])
    ollama.models.append("mistral:7b")  # `ollama pull mistral:7b`
    fake_hub.wait_for(
        lambda b: advertised(b).get("ollama") == ["llama3.2:latest", "qwen3:8b", "mistral:7b"],
        timeout=5,
    )


def test_heartbeat_every_interval(
    start_agent: StartAgent, fake_hub: FakeHub, vllm: FakeVllm
) -> None:
    start_agent({"name": "v", "engine": "vllm", "url": vllm.url}, interval=0.5)
    fake_hub.wait_for(lambda b: True)
    time.sleep(2.2)
    times = [t for t, _ in fake_hub.beats]
    assert 4 <= len(times) <= 7, times
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.3 < g < 1.0 for g in gaps), gaps


def test_key_rejected_stops_the_agent(
    start_agent: StartAgent, fake_hub: FakeHub, vllm: FakeVllm
) -> None:
    agent = start_agent({"name": "v", "engine": "vllm", "url": vllm.url}, key="hub_wrong_key")
    assert agent.wait(15) == 3
    assert "API key rejected by the hub" in agent.stderr
    assert "hub_wrong_key" not in agent.stderr + agent.stdout
    assert fake_hub.beats == []


def test_failed_heartbeats_back_off_and_recover(
    start_agent: StartAgent, fake_hub: FakeHub, vllm: FakeVllm
) -> None:
    fake_hub.fail_next = 3
    agent = start_agent({"name": "v", "engine": "vllm", "url": vllm.url}, interval=5)
    fake_hub.wait_for(lambda b: True, timeout=20)
    failures = [ln for ln in agent.err if "heartbeat to" in ln and "failed" in ln]
    assert len(failures) == 3, agent.stderr
    assert all("HTTP 503: hub is busy" in ln for ln in failures)
    delays = [int(re.search(r"retrying in (\d+)s", ln).group(1)) for ln in failures]  # type: ignore[union-attr]
    assert delays == [1, 2, 4]
    attempts = [r.at for r in fake_hub.requests]
    assert attempts[3] - attempts[2] > 3.5  # the 4 s backoff was honoured
    agent.wait_log("heartbeat accepted by the hub")


def test_unreachable_hub_is_retried(
    start_agent: StartAgent, fake_hub: FakeHub, vllm: FakeVllm
) -> None:
    port = fake_hub.port
    fake_hub.stop()
    agent = start_agent({"name": "v", "engine": "vllm", "url": vllm.url}, interval=5)
    line = agent.wait_log("heartbeat to")
    assert f"cannot connect to 127.0.0.1:{port} (connection refused)" in line
    fake_hub.start(port)
    fake_hub.wait_for(lambda b: True, timeout=15)
    assert agent.proc.poll() is None


def test_key_from_environment_and_settings_from_the_agent_section(
    tmp_path: Path, fake_hub: FakeHub, vllm: FakeVllm
) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        manifest_text(
            {"name": "v", "engine": "vllm", "url": vllm.url},
            agent={
                "name": "from-manifest",
                "hub": fake_hub.root,
                "listen": "127.0.0.1:0",
                "callback_url": "https://agent.example.org/v1",
                "heartbeat_interval": 1,
            },
        )
    )
    agent = AgentProcess(["run", "--manifest", str(manifest)], env={"INFERCLUB_API_KEY": KEY})
    try:
        agent.wait_listening()
        beat = fake_hub.wait_for(lambda b: True)
        assert beat["name"] == "from-manifest"
        assert beat["callback_url"] == "https://agent.example.org/v1"
        assert agent.url.startswith("http://127.0.0.1:")
        assert KEY not in agent.stderr
    finally:
        agent.kill()


def test_missing_key_is_a_usage_error(start_agent: StartAgent, vllm: FakeVllm) -> None:
    agent = start_agent(
        {"name": "v", "engine": "vllm", "url": vllm.url},
        key=None,
        env={"INFERCLUB_API_KEY": ""},
        wait=False,
    )
    assert agent.wait() == 2
    assert "no API key" in agent.stderr


def test_sigterm_drains_in_flight_requests(
    start_agent: StartAgent, fake_hub: FakeHub, vllm: FakeVllm
) -> None:
    vllm.chunks, vllm.chunk_delay = 10, 0.15
    agent = start_agent({"name": "v", "engine": "vllm", "url": vllm.url})
    fake_hub.wait_for(lambda b: bool(b["services"]))
    agent.wait_registered()
    parts = urlsplit(agent.url)
    conn = open_chat_stream(fake_hub, agent.url, "v")
    resp = conn.getresponse()
    assert resp.readline().startswith(b"data: ")
    agent.proc.terminate()  # SIGTERM mid-stream
    rest = resp.read()
    conn.close()
    assert rest.rstrip().endswith(b"data: [DONE]")
    assert rest.count(b"tok") == 10
    assert agent.wait() == 0
    assert vllm.completed_streams == 1
    # Nothing new is accepted once the agent stopped.
    try:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
        conn.request("GET", "/health")
        raise AssertionError("the agent still accepts connections")
    except ConnectionRefusedError:
        pass
    finally:
        conn.close()
