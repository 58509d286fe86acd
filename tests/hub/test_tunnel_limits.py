"""What one tenant's tunnels may cost the hub, on a real hub process: a cap on the tunnels
one user holds open; a tunnel that never sends a heartbeat is closed; a heartbeat flood
closes its tunnel instead of piling replies up in the hub; the internal listener answers
nothing to a request without the hub's signature; an agent's answer cannot inject headers."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import openai
import pytest

from inferclub import signing, tunnel, wire
from inferclub.hub.tunnels import PROVIDER_ID_HEADER
from inferclub.tunnel import FrameType
from tests.support.fakes import FakeVllm
from tests.support.hubproc import HubProcess, start_hub
from tests.support.tunnel import raw_tunnel, refusal, refused_upgrade, tunnel_agent

pytestmark = pytest.mark.subprocess


@pytest.fixture
def capped_tunnel_hub(tmp_path: Path) -> Iterator[HubProcess]:
    with start_hub(tmp_path, env={"INFERCLUB_TUNNEL_MAX_PER_USER": "2"}) as hub:
        yield hub


def test_one_user_holds_at_most_the_limit_of_tunnels(capped_tunnel_hub: HubProcess) -> None:
    hub = capped_tunnel_hub
    alice = hub.user_with_key("alice")
    bob = hub.user_with_key("bob")

    async def scenario() -> None:
        async with AsyncExitStack() as stack:
            # Tunnels that never send a heartbeat count too: they hold a connection each.
            first = await stack.enter_async_context(raw_tunnel(hub, alice))
            await stack.enter_async_context(raw_tunnel(hub, alice))
            status, body, request_id = await asyncio.to_thread(refused_upgrade, hub, alice)
            assert status == 429 and body["error"]["code"] == "tunnel_limit_reached"
            assert "2 tunnels open" in body["error"]["message"]
            assert request_id.startswith("req_")
            # Another user is not held up by alice's tunnels.
            async with raw_tunnel(hub, bob) as bobs:
                assert (await bobs.beat("bob-rig"))["status"] == 200
            # A closed tunnel frees its place.
            await first.ws.close()
            async with raw_tunnel(hub, alice) as again:
                assert (await again.beat("rig"))["status"] == 200

    asyncio.run(scenario())


def test_a_heartbeat_flood_on_a_tunnel_closes_it(capped_tunnel_hub: HubProcess) -> None:
    key = capped_tunnel_hub.user_with_key("alice")
    hb = wire.Heartbeat("rig", "http://127.0.0.1:9/v1", "test", ())
    message = tunnel.text_message("heartbeat", payload=hb.to_json())

    async def scenario() -> None:
        async with raw_tunnel(capped_tunnel_hub, key) as rig:
            # All sent before any reply is read, as a tenant flooding the hub would.
            for _ in range(200):
                await rig.ws.send_str(message)
            code, reason = await rig.closed()
            assert code == tunnel.CLOSE_PROTOCOL and "faster than the hub answers" in reason

    asyncio.run(scenario())
    assert "Traceback" not in capped_tunnel_hub.log()


def internal_post(url: str, headers: dict[str, str]) -> tuple[int, dict[str, object], str]:
    """The status, JSON error and ``X-Request-Id`` of a request the listener refuses."""
    request = urllib.request.Request(url, data=b"{}", headers=headers, method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    with caught.value as err:
        assert err.headers["Server"] == "inferclub"  # as on the public port: no version
        return err.code, json.loads(err.read()), err.headers.get("X-Request-Id", "")


def test_the_internal_listener_tells_an_unsigned_request_nothing(
    capped_tunnel_hub: HubProcess,
) -> None:
    hub = capped_tunnel_hub
    key = hub.user_with_key("alice")

    async def scenario() -> None:
        async with raw_tunnel(hub, key) as rig:
            assert (await rig.beat("rig"))["status"] == 200
            await asyncio.to_thread(probe_internal_listener, hub)

    asyncio.run(scenario())


def probe_internal_listener(hub: HubProcess) -> None:
    """Forged requests for the provider whose tunnel the hub holds, and for one it does not
    hold, get the same 401: neither is relayed, and neither tells which tunnels are there."""
    deadline = time.monotonic() + 10
    while not (rows := hub.query("SELECT id, callback_url FROM providers WHERE name = 'rig'")):
        assert time.monotonic() < deadline, "the provider was never stored"
        time.sleep(0.05)
    url = rows[0]["callback_url"] + "/chat/completions"
    forged = {
        "Content-Type": "application/json",
        signing.TIMESTAMP_HEADER: str(int(time.time())),
        signing.SIGNATURE_HEADER: "c2lnbmVkIGJ5IG5vYm9keQ==",
        signing.REQUEST_ID_HEADER: "req_forged",
    }
    for provider_id in (str(rows[0]["id"]), "999999", "not-a-number"):
        for headers in ({}, forged):
            status, body, request_id = internal_post(
                url, {**headers, PROVIDER_ID_HEADER: provider_id}
            )
            assert status == 401, (provider_id, headers, body)
            assert body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
            # The forwarding process's id when it sent one, else one of the listener's.
            assert request_id == ("req_forged" if headers else request_id)
            assert request_id.startswith("req_")
    # Off the /v1 paths too, every answer of the listener is OpenAI-shaped.
    root = url.split("/v1/")[0]
    for path in ("/", "/metrics", "/health"):
        request = urllib.request.Request(root + path)
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=10)
        with caught.value as err:
            assert err.code == 404, path
            assert err.headers["Server"] == "inferclub"
            assert json.loads(err.read())["error"]["type"] == "invalid_request_error"
            assert err.headers["X-Request-Id"].startswith("req_")


def test_a_response_header_with_a_line_break_closes_the_tunnel(
    capped_tunnel_hub: HubProcess,
) -> None:
    hub = capped_tunnel_hub
    key = hub.user_with_key("alice")

    def chat() -> int:
        sdk = openai.OpenAI(base_url=hub.api_base, api_key=key, max_retries=0)
        with sdk, pytest.raises(openai.APIStatusError) as caught:
            sdk.chat.completions.create(model="m1", messages=[])
        return caught.value.status_code

    async def scenario() -> None:
        async with raw_tunnel(hub, key) as rig:
            assert (await rig.beat("rig"))["status"] == 200
            answered = asyncio.get_running_loop().run_in_executor(None, chat)
            opened = await rig.frame()
            assert opened.type is FrameType.OPEN
            injected = {"Content-Type": "application/json\r\nSet-Cookie: session=stolen"}
            head = {"status": 200, "headers": injected}
            await rig.ws.send_bytes(tunnel.encode_json(FrameType.RESPONSE, opened.stream, head))
            code, reason = await rig.closed()
            assert code == tunnel.CLOSE_PROTOCOL and "header name or value" in reason
            assert await answered == 502

    asyncio.run(scenario())
    assert "Traceback" not in hub.log()


def test_a_tunnel_that_never_names_its_provider_is_closed(tmp_path: Path) -> None:
    with start_hub(tmp_path, online_window=1) as hub:
        key = hub.user_with_key("alice")

        async def scenario() -> None:
            async with raw_tunnel(hub, key) as idle:
                # It answers pings (aiohttp does) but never sends a heartbeat.
                code, reason = await idle.closed()
                assert code == tunnel.CLOSE_PING_TIMEOUT
                assert reason == "no heartbeat accepted in 1 s"

        asyncio.run(scenario())


def test_a_full_hub_refuses_tunnels_before_the_upgrade(tmp_path: Path) -> None:
    engine = FakeVllm(["m1"]).start()
    try:
        with start_hub(tmp_path, env={"INFERCLUB_TUNNEL_MAX_TOTAL": "2"}) as hub:
            keys = [hub.user_with_key(login) for login in ("alice", "bob", "carol")]
            service = {"name": "chat", "engine": "vllm", "url": engine.url}
            asyncio.run(fill_and_refuse(hub, keys, tmp_path / "carol.yaml", service))
            assert "Traceback" not in hub.log()
    finally:
        engine.close()


async def fill_and_refuse(
    hub: HubProcess, keys: list[str], manifest: Path, service: dict[str, str]
) -> None:
    alice, bob, carol = keys
    async with raw_tunnel(hub, alice), raw_tunnel(hub, bob) as bobs:
        # Two users hold the hub's two tunnels: a third user is refused before the upgrade.
        status, body, headers = await asyncio.to_thread(refusal, hub.url, carol)
        assert status == 503, body
        assert body["error"]["code"] == "tunnel_capacity_reached"
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert headers["Retry-After"] == "30"
        assert headers["X-Request-Id"].startswith("req_")
        agent = tunnel_agent(hub, carol, manifest, service, name="carols-rig")
        try:
            # The agent says why in words, and waits at least what the hub asked.
            line = await asyncio.to_thread(agent.wait_log, "tunnel_capacity_reached", 20)
            assert "it holds as many tunnels as it allows" in line
            assert "reconnecting in 30.0 s" in line
        finally:
            agent.kill()
        # A closed tunnel makes room.
        await bobs.ws.close()
        async with raw_tunnel(hub, carol) as carols:
            assert (await carols.beat("carols-rig"))["status"] == 200


def test_a_goodbye_flood_is_paced_like_heartbeats(tmp_path: Path) -> None:
    with start_hub(tmp_path, env={"INFERCLUB_HEARTBEAT_MIN_INTERVAL": "30"}) as hub:
        key = hub.user_with_key("alice")
        goodbye = wire.Heartbeat("rig", "http://127.0.0.1:9/v1", "test", ()).to_json()

        async def scenario() -> None:
            async with raw_tunnel(hub, key) as rig:
                assert (await rig.beat("rig"))["status"] == 200
                statuses = []
                for _ in range(50):
                    await rig.ws.send_str(tunnel.text_message("goodbye", payload=goodbye))
                    statuses.append((await rig.text())["status"])
                assert statuses == [200] + [429] * 49
                # Sent without reading the replies, the flood closes the tunnel.
                for _ in range(200):
                    await rig.ws.send_str(tunnel.text_message("goodbye", payload=goodbye))
                code, reason = await rig.closed()
                assert code == tunnel.CLOSE_PROTOCOL and "faster than the hub answers" in reason

        asyncio.run(scenario())
        # Over HTTP the same: a 429 with Retry-After, and no line in the hub's log.
        payload = {**goodbye, "leaving": True}
        status, body, retry_after = goodbye_over_http(hub.url, key, payload)
        assert status == 429 and body["error"]["code"] == "rate_limit_exceeded"
        assert 0 < int(retry_after) <= 30
        assert (
            "Goodbyes of provider 'rig' come faster than one per 30 s" in body["error"]["message"]
        )
    assert hub.log().count("is shutting down") == 1


def goodbye_over_http(
    base: str, key: str, payload: dict[str, object]
) -> tuple[int, dict[str, Any], str]:
    request = urllib.request.Request(
        base + "/v1/agent/heartbeat",
        data=json.dumps(payload).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    with caught.value as err:
        return err.code, json.loads(err.read()), err.headers.get("Retry-After", "")
