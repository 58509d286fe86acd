"""`serve --workers 2` and a tunnelled agent: the tunnel lands on one worker, and a request
that arrives at the other goes through the holder's internal listener."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import sqlite3
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from inferclub import tunnel, wire
from inferclub.testing import AgentProcess
from tests.support.fakes import FakeVllm
from tests.support.hubproc import HubProcess
from tests.support.tunnel import raw_tunnel, refusal, start_tunnel_agent

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


#: The workers' registry refresh in these tests: how soon a worker that does not hold the
#: tunnel reads its provider from the store.
REFRESH = 0.5


def wait_for_both_workers(hub: HubProcess, key: str, timeout: float = 30) -> None:
    """Both workers route to the tunnel: its provider is in the store, a few refresh intervals
    have passed (so the worker that does not hold it has read it), and a new connection lists
    the model. Answers alone could not say it: the SDK's kept-alive connection saw one worker
    only, and even ten new connections in a row could all reach the tunnel's worker (the kernel
    does not alternate), while the other, not refreshed yet, answered 404."""
    deadline = time.monotonic() + timeout
    while not stored_providers(hub):
        assert time.monotonic() < deadline, "the tunnel's provider never reached the store"
        time.sleep(0.05)
    time.sleep(3 * REFRESH)
    assert "m1" in models_on_a_new_connection(hub, key)


def stored_providers(hub: HubProcess) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{hub.db}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT count(*) FROM providers").fetchone()[0])


def test_requests_reaching_the_other_worker_are_served(tmp_path: Path) -> None:
    engine = FakeVllm(["m1"]).start()
    env = {"INFERCLUB_REGISTRY_REFRESH": str(REFRESH)}
    hub = HubProcess(tmp_path, "--workers", "2", env=env).start()
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


async def third_tunnel_refused(hub: HubProcess, key: str) -> bool:
    """Whether one more tunnel, on a new connection (either worker), is refused with a 429;
    one that is let in is closed at once."""
    url = hub.url.replace("http://", "ws://") + tunnel.TUNNEL_PATH
    async with aiohttp.ClientSession() as session:
        try:
            ws = await session.ws_connect(url, headers={wire.AUTH_HEADER: wire.bearer(key)})
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 429, exc
            return True
        await ws.close()
        return False


def test_the_per_user_tunnel_cap_holds_across_workers(tmp_path: Path) -> None:
    env = {"INFERCLUB_TUNNEL_MAX_PER_USER": "2", "INFERCLUB_REGISTRY_REFRESH": str(REFRESH)}
    hub = HubProcess(tmp_path, "--workers", "2", env=env).start()
    try:
        key = hub.user_with_key("alice")

        async def scenario() -> None:
            async with raw_tunnel(hub, key) as one, raw_tunnel(hub, key) as two:
                assert (await one.beat("rig-1"))["status"] == 200
                assert (await two.beat("rig-2"))["status"] == 200
                # Each new connection reaches either worker; once both have read the two
                # providers from the store, every one is refused, whichever worker holds
                # the tunnels (counted per process, the other worker let a third in).
                deadline, in_a_row = time.monotonic() + 30, 0
                while in_a_row < 10:
                    assert time.monotonic() < deadline, "a worker let a third tunnel in"
                    in_a_row = in_a_row + 1 if await third_tunnel_refused(hub, key) else 0
                    if not in_a_row:
                        await asyncio.sleep(0.2)
                status, body, headers = await asyncio.to_thread(refusal, hub.url, key)
                assert status == 429 and body["error"]["code"] == "tunnel_limit_reached"
                assert headers["X-Request-Id"].startswith("req_")

        asyncio.run(scenario())
    finally:
        hub.stop()
