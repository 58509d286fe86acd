"""`serve --workers 2` and a tunnelled agent: the tunnel lands on one worker, and a request
that arrives at the other goes through the holder's internal listener."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from inferclub.testing import AgentProcess
from tests.support.fakes import FakeVllm
from tests.support.hubproc import HubProcess
from tests.support.tunnel import start_tunnel_agent

pytestmark = pytest.mark.subprocess

FORWARDED = "is held at http://127.0.0.1:"


def chat_on_a_new_connection(hub: HubProcess, key: str, stream: bool) -> bytes:
    """One chat on its own connection: the kernel hands it to either worker."""
    parts = urlsplit(hub.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        body = {"model": "m1", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=json.dumps(body),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 200, data
        return data
    finally:
        conn.close()


def models_on_a_new_connection(hub: HubProcess, key: str) -> set[str]:
    parts = urlsplit(hub.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.request("GET", "/v1/models", headers={"Authorization": f"Bearer {key}"})
        return {m["id"] for m in json.loads(conn.getresponse().read())["data"]}
    finally:
        conn.close()


def wait_for_both_workers(hub: HubProcess, key: str, timeout: float = 30) -> None:
    """Both workers list the model: ten answers in a row on new connections (which the kernel
    spreads over the workers) say so. The SDK's one kept-alive connection saw one worker only,
    and the other, not yet refreshed from the store, then answered 404."""
    deadline = time.monotonic() + timeout
    in_a_row = 0
    while in_a_row < 10:
        assert time.monotonic() < deadline, "a worker never listed the tunnelled model"
        in_a_row = in_a_row + 1 if "m1" in models_on_a_new_connection(hub, key) else 0
        if not in_a_row:
            time.sleep(0.2)


def test_requests_reaching_the_other_worker_are_served(tmp_path: Path) -> None:
    engine = FakeVllm(["m1"]).start()
    hub = HubProcess(tmp_path, "--workers", "2").start()
    agent: AgentProcess | None = None
    try:
        key = hub.user_with_key("alice")
        service = {"name": "chat", "engine": "vllm", "url": engine.url}
        agent = start_tunnel_agent(hub, key, tmp_path / "a.yaml", service)
        wait_for_both_workers(hub, key)  # the other worker reads it from the store
        served = 0
        while FORWARDED not in hub.log() and served < 200:
            data = chat_on_a_new_connection(hub, key, stream=served % 2 == 1)
            assert b"error" not in data, data
            served += 1
        assert FORWARDED in hub.log(), f"all {served} requests reached the tunnel's worker"
        streamed = chat_on_a_new_connection(hub, key, stream=True)
        assert streamed.rstrip().endswith(b"data: [DONE]")
    finally:
        if agent is not None:
            agent.kill()
        hub.stop()
        engine.close()
