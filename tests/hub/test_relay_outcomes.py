"""How a proxied stream ends, as its client and its history row see it: the real hub
(subprocess) in front of a fake agent that breaks, reports an engine failure, or stalls until
the hub's shutdown deadline."""

from __future__ import annotations

import http.client
import json
import re
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.fakes.agent import FakeAgent
from tests.support.fakes.base import FakeHandler, chat_chunks, words
from tests.support.hubproc import HubProcess, start_hub

pytestmark = pytest.mark.subprocess

LLM = [{"name": "chat", "type": "llm", "engine": "vllm", "features": [], "models": ["m1"]}]
#: What the real agent sends when its engine fails mid-stream (agent/server.py).
AGENT_ERROR = {
    "error": {
        "message": "service 'chat' failed mid-stream: ClientPayloadError",
        "type": "server_error",
        "param": None,
        "code": "engine_stream_error",
    }
}


class EngineFailsMidStream(FakeHandler):
    async def post(self) -> None:
        events = chat_chunks("m1", words(2), include_usage=False)[:3]
        self.set_header("Content-Type", "text/event-stream")
        chunks = [f"data: {json.dumps(e)}\n\n".encode() for e in [*events, AGENT_ERROR]]
        await self.stream_bytes([*chunks, b"data: [DONE]\n\n"], delay=0)


class ReportingAgent(FakeAgent):
    """An agent whose engine breaks after three chunks; the agent says so in an error event."""

    def routes(self) -> list[Any]:
        return [(r"/v1/chat/completions", EngineFailsMidStream, {"fake": self}), *super().routes()]


@pytest.fixture
def agent() -> Iterator[FakeAgent]:
    with FakeAgent(["m1"]) as a:
        yield a


def post_stream(hub: HubProcess, key: str) -> tuple[int, str, bytes]:
    """A streamed chat request read raw: (status, request id, the whole body)."""
    url = urllib.parse.urlsplit(hub.url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)
    try:
        body = {"model": "m1", "messages": [], "stream": True}
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        conn.request("POST", "/v1/chat/completions", json.dumps(body), headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("X-Request-Id") or "", resp.read()
    finally:
        conn.close()


@contextmanager
def chat_stream(hub: HubProcess, key: str) -> Iterator[tuple[str, Iterator[Any]]]:
    """A streamed chat completion through the openai SDK: (request id, its chunks)."""
    with (
        openai.OpenAI(base_url=hub.api_base, api_key=key, max_retries=0) as client,
        client.chat.completions.with_streaming_response.create(
            model="m1", messages=[], stream=True
        ) as resp,
    ):
        yield resp.headers["x-request-id"], iter(resp.parse())


def broken(chunks: Iterator[Any]) -> bool:
    """Read the rest of a stream: whether it broke off (the SDK's HTTP client raises)."""
    try:
        for _ in chunks:
            pass
    except Exception:  # the HTTP client's own error type; which one is its business
        return True
    return False


def row(hub: HubProcess, request_id: str, timeout: float = 10) -> sqlite3.Row:
    deadline = time.monotonic() + timeout
    while not (rows := hub.query("SELECT * FROM requests WHERE id = ?", request_id)):
        assert time.monotonic() < deadline, f"no history row for {request_id}"
        time.sleep(0.05)
    return rows[0]


def last_event(body: bytes) -> dict[str, Any]:
    events = [e for e in body.split(b"\n\n") if e.startswith(b"data: {")]
    return json.loads(events[-1][len(b"data: ") :])  # type: ignore[no-any-return]


def dashboard(hub: HubProcess, login: str, path: str) -> str:
    """A dashboard page as ``login`` sees it, signed in with a one-time link from the CLI."""
    link = urllib.parse.urlsplit(hub.cli("users", "login-link", login).stdout.split()[-1])
    url = urllib.parse.urlsplit(hub.url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)
    try:
        conn.request("GET", f"{link.path}?{link.query}")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 302, resp.status
        cookie = (resp.getheader("Set-Cookie") or "").split(";")[0]
        conn.request("GET", path, headers={"Cookie": cookie})
        page = conn.getresponse()
        assert page.status == 200, page.status
        return page.read().decode()
    finally:
        conn.close()


def chart_errors(page: str) -> int:
    m = re.search(r'<script type="application/json" id="chart-data">(.*?)</script>', page)
    assert m
    return sum(b["errors"] for b in json.loads(m.group(1))["series"])


def test_a_stream_the_agent_breaks_ends_with_an_error_event_and_a_502_row(
    hub_process: HubProcess, agent: FakeAgent
) -> None:
    key = hub_process.user_with_key("alice")
    assert hub_process.heartbeat(key, "rig", agent.url, LLM)[0] == 200
    agent.break_after = 3
    status, request_id, body = post_stream(hub_process, key)
    assert status == 200 and body.count(b'"chat.completion.chunk"') == 3
    assert body.endswith(b"\n\n")
    error = last_event(body)["error"]
    assert (
        error["code"] == "upstream_error" and "connection to the provider broke" in error["message"]
    )
    r = row(hub_process, request_id)
    assert (r["status"], r["error_type"], r["error_code"]) == (
        502,
        "server_error",
        "upstream_error",
    )
    assert r["cancelled"] == 0 and r["bytes_out"] == len(body)

    # The requests page counts it as an error, and its status filter finds it.
    assert chart_errors(dashboard(hub_process, "alice", "/dashboard/requests")) == 1
    page = dashboard(hub_process, "alice", "/dashboard/requests?status=502")
    assert re.findall(r'data-request-id="([^"]+)"', page) == [request_id]
    assert "<code>upstream_error</code>" in dashboard(
        hub_process, "alice", f"/dashboard/requests/{request_id}"
    )


def test_an_engine_failure_the_agent_reports_mid_stream_is_a_502_row(
    hub_process: HubProcess,
) -> None:
    key = hub_process.user_with_key("alice")
    with ReportingAgent(["m1"]) as agent:
        assert hub_process.heartbeat(key, "rig", agent.url, LLM)[0] == 200
        got: list[Any] = []
        with (
            openai.OpenAI(base_url=hub_process.api_base, api_key=key, max_retries=0) as client,
            pytest.raises(openai.APIError) as exc,
        ):
            got.extend(client.chat.completions.create(model="m1", messages=[], stream=True))
        assert len(got) == 3 and "failed mid-stream" in exc.value.message
        status, request_id, body = post_stream(hub_process, key)
    assert status == 200 and last_event(body) == AGENT_ERROR
    assert body.endswith(b"data: [DONE]\n\n"), "relayed as the agent sent it"
    r = row(hub_process, request_id)
    assert (r["status"], r["error_type"]) == (502, "server_error")
    assert (r["error_code"], r["cancelled"]) == ("engine_stream_error", 0)


def test_a_stream_cut_at_the_shutdown_deadline_is_recorded_as_cut_by_the_hub(
    tmp_path: Path, agent: FakeAgent
) -> None:
    with start_hub(tmp_path, env={"INFERCLUB_DRAIN_TIMEOUT": "0.3"}) as hub:
        key = hub.user_with_key("alice")
        assert hub.heartbeat(key, "rig", agent.url, LLM)[0] == 200
        agent.stall_after = 2  # then silent, longer than the drain deadline
        with chat_stream(hub, key) as (request_id, it):
            next(it), next(it)
            stopper = threading.Thread(target=lambda: setattr(hub, "code", hub.stop()))
            stopper.start()
            # It ends with an error event saying why, not with a truncated body.
            with pytest.raises(openai.APIError) as exc:
                for _ in it:
                    pass
            assert "shutting down" in exc.value.message
        stopper.join(30)
        assert hub.code == 0, hub.log()  # type: ignore[attr-defined]
        assert "drain deadline reached with 1 requests in flight" in hub.log()
        r = row(hub, request_id, timeout=0)
        assert (r["status"], r["error_type"]) == (503, "server_error")
        assert r["error_code"] == "server_shutting_down"
        assert r["cancelled"] == 0, "the client did not cancel anything"
        deadline = time.monotonic() + 5
        while not agent.disconnects and time.monotonic() < deadline:
            time.sleep(0.02)
        assert agent.disconnects, "the agent's stream was closed too"
    # Started again, the requests page tells the cut apart from a client that left.
    with start_hub(tmp_path) as again:
        page = dashboard(again, "alice", "/dashboard/requests?status=503")
    assert re.findall(r'data-request-id="([^"]+)"', page) == [request_id]
    assert ">cut at shutdown<" in page and ">cancelled<" not in page


def test_a_client_that_leaves_is_still_recorded_as_cancelled(
    hub_process: HubProcess, agent: FakeAgent
) -> None:
    key = hub_process.user_with_key("alice")
    assert hub_process.heartbeat(key, "rig", agent.url, LLM)[0] == 200
    agent.stall_after = 2
    with chat_stream(hub_process, key) as (request_id, it):
        next(it), next(it)
    r = row(hub_process, request_id)
    assert (r["cancelled"], r["status"], r["error_code"]) == (1, 200, None)


def test_during_the_drain_answers_close_their_connection_and_new_requests_get_503(
    tmp_path: Path, agent: FakeAgent
) -> None:
    with start_hub(tmp_path, env={"INFERCLUB_DRAIN_TIMEOUT": "5"}) as hub:
        key = hub.user_with_key("alice")
        assert hub.heartbeat(key, "rig", agent.url, LLM)[0] == 200
        url = urllib.parse.urlsplit(hub.url)
        kept = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        body = json.dumps({"model": "m1", "messages": []})
        kept.request("POST", "/v1/chat/completions", body, headers)
        first = kept.getresponse()
        first.read()
        assert first.status == 200 and first.getheader("Connection") != "close"
        agent.chunks, agent.chunk_delay = 20, 0.1  # keeps the hub draining for 2 s
        with chat_stream(hub, key) as (_, it):
            next(it)
            stopper = threading.Thread(target=lambda: setattr(hub, "code", hub.stop()))
            stopper.start()
            deadline = time.monotonic() + 10
            while "shutting down" not in hub.log():
                assert time.monotonic() < deadline
                time.sleep(0.02)
            # The kept-alive connection's next request: refused, and the connection closed.
            kept.request("POST", "/v1/chat/completions", body, headers)
            refused = kept.getresponse()
            error = json.loads(refused.read())["error"]
            assert refused.status == 503 and error["code"] == "server_shutting_down"
            assert refused.getheader("Retry-After") == "1"
            assert refused.getheader("Connection") == "close"
            assert (refused.getheader("X-Request-Id") or "").startswith("req_")
            assert not broken(it), "the stream in flight ran to its end"
        kept.close()
        stopper.join(30)
        assert hub.code == 0, hub.log()  # type: ignore[attr-defined]
        assert "open-files limit:" in hub.log()  # raised to the hard limit at start


def test_an_answer_on_its_way_when_the_drain_begins_closes_its_connection(
    tmp_path: Path, agent: FakeAgent
) -> None:
    with start_hub(tmp_path, env={"INFERCLUB_DRAIN_TIMEOUT": "20"}) as hub:
        key = hub.user_with_key("alice")
        assert hub.heartbeat(key, "rig", agent.url, LLM)[0] == 200
        agent.hold()  # the answer is still on its way when the drain begins
        url = urllib.parse.urlsplit(hub.url)
        kept = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        kept.request("POST", "/v1/chat/completions", json.dumps({"model": "m1"}), headers)
        deadline = time.monotonic() + 10
        while not agent.posts("/v1/chat/completions"):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        stopper = threading.Thread(target=lambda: setattr(hub, "code", hub.stop()))
        stopper.start()
        while "shutting down" not in hub.log():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        agent.release()  # instead of a 3 s delay that the drain had to begin within
        answer = kept.getresponse()
        answer.read()
        assert "shutting down" in hub.log(), "the answer came before the drain began"
        assert answer.status == 200 and answer.getheader("Connection") == "close"
        kept.close()
        stopper.join(30)
        assert hub.code == 0, hub.log()  # type: ignore[attr-defined]
