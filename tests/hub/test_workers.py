"""`inferclub serve --workers 2`: one `listening on` line, both workers serve the port and route a
heartbeat either of them saw within a second, sign with one key, and SIGTERM drains them all
(exit 0)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import openai
import pytest
from tornado.httputil import HTTPHeaders

from inferclub.hub.workers import worker_count
from inferclub.signing import RequestVerifier
from tests.support.fakes.agent import FakeAgent
from tests.support.hubproc import LISTENING, HubProcess, post_json, request_json

pytestmark = pytest.mark.subprocess

LLM = [{"name": "chat", "type": "llm", "engine": "vllm", "models": ["m1"]}]


def test_two_workers_serve_route_alike_and_drain(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path, "--workers", "2").start()
    try:
        key = hub.user_with_key("alice")
        assert hub.proc is not None
        assert len(_children(hub.proc.pid)) == 2
        with FakeAgent(["m1"]) as agent:
            assert hub.heartbeat(key, "rig", agent.url, LLM)[0] == 200
            # Each new connection may reach either worker: within a second all route it.
            time.sleep(1.0)
            chat = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
            for _ in range(20):
                status, body = post_json(hub.url, "/v1/chat/completions", chat, key)
                assert status == 200, body
            rows = hub.wait_for_request_rows(20)
            assert [r["status"] for r in rows] == [200] * 20
            # One hub key, whichever worker answers or signs.
            published = {request_json(hub.url, "GET", "/v1/agent/hub-key", None, None)[1]["key"]}
            published |= {hub.heartbeat(key, "rig", agent.url, LLM)[1]["hub_key"] for _ in "ab"}
            assert len(published) == 1
            hub_key = published.pop()
            # Logged once at start, so operators of several hubs can compare the copies.
            assert hub.log().count(f"signing requests to agents with {hub_key}") == 1
            verifier = RequestVerifier(hub_key, cache_size=100)
            for sent in agent.posts("/v1/chat/completions"):
                headers = HTTPHeaders(sent.headers)  # names in any case, as an agent reads them
                verifier.verify(sent.method, sent.path, headers, sent.body, str(1))
    finally:
        assert hub.stop() == 0
    assert [line for line in hub.stdout_lines if LISTENING.match(line)] == [hub.stdout_lines[0]]
    assert sum(1 for line in hub.stdout_lines if "listening on" in line) == 1
    assert hub.log().count(" stopped") == 2


def test_sigterm_to_the_parent_lets_a_worker_finish_its_stream(tmp_path: Path) -> None:
    hub = HubProcess(tmp_path, "--workers", "2").start()
    try:
        key = hub.user_with_key("alice")
        with FakeAgent(["m1"]) as agent:
            assert hub.heartbeat(key, "rig", agent.url, LLM)[0] == 200
            time.sleep(1.0)  # whichever worker takes the stream routes the provider
            agent.chunks, agent.chunk_delay = 10, 0.1
            with openai.OpenAI(base_url=hub.api_base, api_key=key, max_retries=0) as c:
                stream = c.chat.completions.create(model="m1", messages=[], stream=True)
                it = iter(stream)
                next(it)
                code: list[int] = []
                stopper = threading.Thread(target=lambda: code.append(hub.stop()))
                stopper.start()
                rest = list(it)
                stopper.join(30)
        text = "".join(ch.choices[0].delta.content or "" for ch in rest if ch.choices)
        assert text.endswith("tok9 "), "the stream ran to its end"
        assert code == [0], hub.log()
        assert "draining 1 in-flight" in hub.log()
        assert hub.log().count(" stopped") == 2
    finally:
        hub.stop()


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_worker_counts() -> None:
    assert worker_count("3") == 3
    assert worker_count("auto") >= 1
    for bad in ("0", "-1", "many"):
        with pytest.raises(ValueError, match="workers"):
            worker_count(bad)
