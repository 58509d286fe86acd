"""A hostile tenant against the hub->agent channel: with nothing but an API key, each attack of
issue 9 that concerns the channel, reproduced against the in-process hub and shown refused.

Each test asserts what the attacker sees (status, error code) and that nothing was stored and
nothing was reached.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.ioloop import IOLoop

from inferclub.hub.reachability import REACHABILITY_TEXT
from inferclub.hub.store import ServiceInfo
from inferclub.testing import AgentProcess, FakeHub, StartAgent
from tests.support.fakes import FakeVllm
from tests.support.fakes.agent import LLM, FakeAgent
from tests.support.fakes.base import FakeHandler, FakeServer, chat_completion
from tests.support.hubapp import HubApp, running_hub

#: The setting a hub on the internet gets by default (``public_url`` is https).
PUBLIC = {"callback_networks": "public"}


@pytest.fixture
def public_hub(tmp_path: Path, io_loop: IOLoop) -> Iterator[HubApp]:
    """A hub whose callback policy admits only public addresses."""
    hub = running_hub(tmp_path / "public", **PUBLIC)
    app = io_loop.run_sync(hub.__aenter__)
    try:
        yield app
    finally:
        io_loop.run_sync(lambda: hub.__aexit__(None, None, None))


@pytest.fixture
def target() -> Iterator[FakeAgent]:
    """Something inside the hub's network that a tenant wants the hub to call."""
    with FakeAgent(["m1"]) as agent:
        yield agent


async def post(app: HubApp, path: str, payload: Any, key: str) -> tuple[HTTPResponse, Any]:
    resp = await AsyncHTTPClient().fetch(
        app.url + path,
        method="POST",
        body=json.dumps(payload),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        raise_error=False,
    )
    return resp, json.loads(resp.body)


def heartbeat(url: str, name: str = "rig") -> dict[str, Any]:
    return {"name": name, "callback_url": url, "version": "evil", "services": LLM}


def ssrf_urls(port: int) -> list[str]:
    """Loopback in every spelling, metadata, private ranges, and tenant-chosen paths."""
    return [
        f"http://127.0.0.1:{port}/v1",
        f"http://0x7f.1:{port}/v1",
        f"http://127.1:{port}/v1",
        f"http://2130706433:{port}/v1",
        f"http://[::ffff:127.0.0.1]:{port}/v1",
        f"http://[::1]:{port}/v1",
        f"http://localhost.:{port}/v1",
        f"http://sub.localhost:{port}/v1",
        f"http://0.0.0.0:{port}/v1",
        "http://169.254.169.254/latest/meta-data",
        "http://[fd00:ec2::254]/latest",
        "http://10.0.0.5/v1",
        "http://192.168.1.1/v1",
        "http://100.64.1.1/v1",
        # A query or fragment lets the tenant choose the path the hub calls.
        "http://8.8.8.8/admin/delete?x=",
        "http://8.8.8.8/v1#frag",
        "http://user:pw@8.8.8.8/v1",
        "http://8.8.8.8\\@127.0.0.1/v1",
    ]


@pytest.mark.parametrize("index", range(len(ssrf_urls(1))))
async def test_ssrf_callback_urls_are_refused_and_nothing_is_saved(
    public_hub: HubApp, target: FakeAgent, index: int
) -> None:
    url = ssrf_urls(target.port)[index]
    key = await public_hub.user_with_key("mallory")
    resp, body = await post(public_hub, "/v1/agent/heartbeat", heartbeat(url), key)
    assert resp.code == 400, body
    error = body["error"]
    assert error["param"] == "callback_url"
    assert error["code"] in {
        "callback_address_refused",
        "invalid_callback_url",
        "invalid_heartbeat",
    }
    if error["code"] == "callback_address_refused":
        # The message names the resolved address and the setting to change.
        assert "callback_networks" in error["message"]
    assert public_hub.query("SELECT id FROM providers") == []
    assert target.requests == []


async def test_refusal_names_the_resolved_address(public_hub: HubApp, target: FakeAgent) -> None:
    key = await public_hub.user_with_key("mallory")
    url = f"http://0x7f.1:{target.port}/v1"
    resp, body = await post(public_hub, "/v1/agent/heartbeat", heartbeat(url), key)
    assert resp.code == 400
    assert body["error"]["code"] == "callback_address_refused"
    assert "127.0.0.1" in body["error"]["message"]
    assert "INFERCLUB_CALLBACK_NETWORKS" in body["error"]["message"]


async def test_a_saved_url_that_turns_internal_is_refused_at_connect(
    public_hub: HubApp, target: FakeAgent
) -> None:
    """A provider stored while the address was allowed (or a name that rebinds): the relay
    checks the address again when it connects, and the internal service sees nothing."""
    key = await public_hub.user_with_key("mallory")
    user = await public_hub.hub.store.get_user("mallory")
    assert user is not None
    record = await public_hub.hub.store.save_heartbeat(
        user.id,
        "rig",
        target.url,
        "evil",
        {},
        [ServiceInfo("chat", "llm", "vllm", [], ["m1"])],
        time.time(),
    )
    public_hub.hub.registry.update(record)
    resp, body = await post(
        public_hub,
        "/v1/chat/completions",
        {"model": "m1", "messages": [{"role": "user", "content": "hi"}]},
        key,
    )
    assert resp.code == 502, body
    assert body["error"]["code"] == "upstream_unreachable"
    assert target.requests == []


def banner_server() -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.setblocking(False)
    return srv, srv.getsockname()[1]


async def serve_banner(srv: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    while True:
        conn, _ = await loop.sock_accept(srv)
        with conn:
            await loop.sock_sendall(conn, b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13.5\r\n")


async def test_reachability_reply_is_a_kind_never_the_remote_banner(hub_app: HubApp) -> None:
    """The local-install default admits loopback; still the heartbeat reply must not read
    out what answered on a port (a port scanner that shows banners)."""
    key = await hub_app.user_with_key("mallory")
    srv, port = banner_server()
    task = asyncio.create_task(serve_banner(srv))
    try:
        resp, body = await post(
            hub_app, "/v1/agent/heartbeat", heartbeat(f"http://127.0.0.1:{port}/v1"), key
        )
    finally:
        task.cancel()
        srv.close()
    assert resp.code == 200, body
    assert body["callback_reachable"] is False
    assert body["callback_error"] == REACHABILITY_TEXT["not_http"]
    assert "SSH" not in resp.body.decode() and "Ubuntu" not in resp.body.decode()


async def test_a_closed_port_reads_as_refused_without_detail(hub_app: HubApp) -> None:
    key = await hub_app.user_with_key("mallory")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    resp, body = await post(
        hub_app, "/v1/agent/heartbeat", heartbeat(f"http://127.0.0.1:{port}/v1"), key
    )
    assert resp.code == 200
    assert body["callback_error"] == REACHABILITY_TEXT["refused"]
    assert "Errno" not in resp.body.decode()


# -- the agent forwards only what the hub routes, and checks before it reads ------------------


@pytest.fixture
def engine() -> Iterator[FakeVllm]:
    with FakeVllm() as f:
        yield f


@pytest.fixture
def real_agent(start_agent: StartAgent, fake_hub: FakeHub, engine: FakeVllm) -> AgentProcess:
    agent = start_agent({"name": "vllm-qwen", "engine": "vllm", "url": engine.url})
    fake_hub.wait_for(lambda b: any(s["name"] == "vllm-qwen" for s in b["services"]))
    agent.wait_registered()
    return agent


def raw_request(agent_url: str, method: str, path: str, hub: FakeHub | None) -> int:
    """``method path`` on the agent, signed by ``hub`` exactly as sent (``None``: unsigned)."""
    parts = urlsplit(agent_url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    body = b'{"model": "Qwen/Qwen3-8B"}'
    headers = {"Content-Type": "application/json", "X-InferClub-Service": "vllm-qwen"}
    if hub is not None:
        request_id = f"req_{time.monotonic_ns()}"
        signed = hub.signer.sign(
            method, path, request_id, str(hub.provider_id), body, service="vllm-qwen"
        )
        headers.update(signed)
    try:
        conn.request(method, path, body=body, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/api/delete"),
        ("PUT", "/v1/chat/completions"),
        ("POST", "/api/delete"),
        ("POST", "/v1/../../api/delete"),
        ("POST", "/v1/%2e%2e/%2e%2e/api/delete"),
        ("POST", "/v1/chat/completions/..%2f..%2f..%2fapi/delete"),
        ("POST", "/v1//chat/completions"),
        ("POST", "/v1/chat/completions/"),
        ("POST", "/v1/models"),
        ("GET", "/v1/chat/completions"),
        ("GET", "/v1/models/../../api/tags"),
    ],
)
def test_agent_forwards_no_other_method_or_path(
    real_agent: AgentProcess, fake_hub: FakeHub, engine: FakeVllm, method: str, path: str
) -> None:
    """Even signed by the hub: the agent serves only what the hub routes."""
    status = raw_request(real_agent.callback_url, method, path, fake_hub)
    assert status in (404, 405)
    # The agent's own health probes are all the engine saw.
    probes = {("GET", "/health"), ("GET", "/version"), ("GET", "/v1/models")}
    assert [r for r in engine.requests if (r.method, r.path) not in probes] == []


@pytest.mark.subprocess
@pytest.mark.parametrize(
    ("signature", "path", "status"),
    [
        ("none", "/v1/chat/completions", 401),
        ("bearer", "/v1/chat/completions", 401),
        ("malformed", "/v1/chat/completions", 401),
        ("stale", "/v1/chat/completions", 401),
        ("well-formed", "/v1/../x", 404),
    ],
)
def test_agent_answers_before_reading_a_huge_body(
    real_agent: AgentProcess, fake_hub: FakeHub, signature: str, path: str, status: int
) -> None:
    """Headers announcing 150 MiB and not a byte of body: the answer comes anyway, so the
    agent never buffers a body it is going to refuse: unsigned, a bearer token, a malformed or
    stale signature, a path it never serves. (A well-formed but forged signature is found out
    only with the body, which the agent reads up to its limit and then refuses.)"""
    parts = urlsplit(real_agent.callback_url)
    now = int(time.time())
    headers = {
        "none": "",
        "bearer": "Authorization: Bearer cbt_0123456789abcdefghijklmnopqrstuv\r\n",
        "malformed": f"X-InferClub-Timestamp: {now}\r\nX-InferClub-Signature: x\r\n",
        "stale": f"X-InferClub-Timestamp: {now - 120}\r\nX-InferClub-Signature: {'A' * 86}\r\n",
        "well-formed": f"X-InferClub-Timestamp: {now}\r\nX-InferClub-Signature: {'A' * 86}\r\n",
    }[signature]
    if signature != "none":
        headers += "X-Request-Id: req_1\r\n"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\n"
        f"Content-Length: {150 * 1024 * 1024}\r\n{headers}\r\n"
    )
    with socket.create_connection((parts.hostname or "", parts.port or 80), timeout=20) as s:
        s.sendall(head.encode())
        answer = s.recv(4096).decode()
    assert answer.startswith(f"HTTP/1.1 {status} ")


# -- an agent cannot speak for the hub in X-InferClub-* headers ------------------------------


class SpoofingAgent(FakeServer):
    """An agent that answers chat with headers only the hub should set."""

    def routes(self) -> list[Any]:
        return [(r"/v1/.*", SpoofingHandler, {"fake": self})]


class SpoofingHandler(FakeHandler):
    def get(self) -> None:
        self.send_json({"object": "list", "data": []})

    def post(self) -> None:
        self.set_header("X-InferClub-Provider", "someone-trusted")
        self.set_header("X-InferClub-Service", "spoofed")
        self.set_header("X-InferClub-Downgraded", "verbose_json->text")
        self.send_json(chat_completion("m1", "hello"))


async def test_agent_sent_inferclub_headers_are_dropped_except_downgraded(
    hub_app: HubApp,
) -> None:
    with SpoofingAgent() as spoof:
        key = await hub_app.user_with_key("mallory")
        resp, body = await post(hub_app, "/v1/agent/heartbeat", heartbeat(spoof.url), key)
        assert resp.code == 200, body
        resp, body = await post(
            hub_app,
            "/v1/chat/completions",
            {"model": "m1", "messages": [{"role": "user", "content": "hi"}]},
            key,
        )
    assert resp.code == 200, body
    assert resp.headers["X-InferClub-Provider"] == "rig"
    assert "X-InferClub-Service" not in resp.headers
    assert resp.headers["X-InferClub-Downgraded"] == "verbose_json->text"


#: Where the endless agent below stops on its own, so a hub that reads everything cannot take
#: the test machine down with it.
ENDLESS_CAP = 128 * 1024 * 1024


async def test_a_probe_answered_with_an_endless_body_reads_none_of_it(hub_app: HubApp) -> None:
    """The reachability probe needs a status line, not a body: before, the hub read whatever
    the tenant's agent sent for the whole 3 s (400 MiB of memory for one heartbeat) and then
    called the agent unreachable."""
    key = await hub_app.user_with_key("mallory")
    sent = 0

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"100000\r\n" + b"x" * 0x100000 + b"\r\n"
        try:
            while sent < ENDLESS_CAP:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
            await reader.read()  # hold the connection open, as a stuck agent would
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(endless, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        resp, body = await post(
            hub_app, "/v1/agent/heartbeat", heartbeat(f"http://127.0.0.1:{port}/v1"), key
        )
    finally:
        server.close()
    assert resp.code == 200, body
    assert body["callback_reachable"] is True, body
    assert sent < ENDLESS_CAP // 2
