"""The tunnel endpoint against hostile or broken agents, on a real hub process: the key is
checked before the upgrade, one provider per tunnel with the heartbeat's name ownership, a
tunnel never gets another user's requests, and bad frames close it with a reason (never a
crash)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from inferclub import tunnel
from inferclub.tunnel import FrameType
from tests.support.hubproc import HubProcess, start_hub
from tests.support.stack import wait_models
from tests.support.tunnel import UPGRADE, raw_tunnel, refused_upgrade

pytestmark = pytest.mark.subprocess


@pytest.fixture
def tunnel_hub(tmp_path: Path) -> Iterator[HubProcess]:
    with start_hub(tmp_path, env={"INFERCLUB_TUNNEL_MAX_STREAMS": "2"}) as hub:
        yield hub


def test_the_key_is_checked_before_the_upgrade(tunnel_hub: HubProcess) -> None:
    status, body, request_id = refused_upgrade(tunnel_hub, None)
    assert status == 401 and body["error"]["code"] == "missing_api_key"
    assert request_id.startswith("req_")
    status, body, _ = refused_upgrade(tunnel_hub, "sk-not-a-real-key")
    assert status == 401
    tunnel_hub.create_user("alice")
    out = tunnel_hub.cli("keys", "create", "alice", "--scope", "inference").stdout
    inference_key = out.strip().splitlines()[-1]
    status, body, request_id = refused_upgrade(tunnel_hub, inference_key)
    assert status == 403 and body["error"]["code"] == "insufficient_scope"
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert request_id.startswith("req_")


def test_one_provider_per_tunnel_and_names_stay_their_owners(tunnel_hub: HubProcess) -> None:
    owner = tunnel_hub.user_with_key("alice")
    other = tunnel_hub.create_key("alice", "second")

    async def scenario() -> None:
        async with raw_tunnel(tunnel_hub, owner) as mine:
            assert (await mine.beat("rig"))["status"] == 200
            async with raw_tunnel(tunnel_hub, other) as thief:
                reply = await thief.beat("rig")
                assert reply["status"] == 409
                assert reply["body"]["error"]["code"] == "provider_name_taken"
                code, _ = await thief.closed()
                assert code == tunnel.CLOSE_REFUSED
            reply = await mine.beat("another")
            assert reply["status"] == 409 and "carries provider 'rig'" in json.dumps(reply)
            code, reason = await mine.closed()
            assert code == tunnel.CLOSE_REFUSED and "carries provider" in reason

    asyncio.run(scenario())


def test_another_users_requests_never_reach_a_tunnel(tunnel_hub: HubProcess) -> None:
    alice = tunnel_hub.user_with_key("alice")
    bob = tunnel_hub.user_with_key("bob")

    async def scenario() -> None:
        async with raw_tunnel(tunnel_hub, alice) as rig:
            assert (await rig.beat("rig"))["status"] == 200
            sdk = openai.OpenAI(base_url=tunnel_hub.api_base, api_key=bob, max_retries=0)
            with sdk, pytest.raises(openai.NotFoundError):
                await asyncio.to_thread(sdk.chat.completions.create, model="m1", messages=[])
            with pytest.raises(TimeoutError):
                await rig.ws.receive(timeout=0.5)  # no frame came

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("message", "code", "reason"),
    [
        (b"\x63junk", tunnel.CLOSE_PROTOCOL, "unknown frame type 99"),
        (b"\x02\x00", tunnel.CLOSE_PROTOCOL, "shorter than its header"),
        (tunnel.encode(FrameType.DATA, 7), tunnel.CLOSE_PROTOCOL, "never opened"),
        (tunnel.encode(FrameType.OPEN, 1), tunnel.CLOSE_PROTOCOL, "hub to the agent only"),
        (b"\x02\x00\x00\x00\x01" + bytes(100_000), tunnel.CLOSE_PROTOCOL, "over the"),
        (bytes(1024 * 1024), 1009, ""),  # past the WebSocket's message limit
    ],
)
def test_bad_frames_close_the_tunnel_with_a_reason(
    tunnel_hub: HubProcess, message: bytes, code: int, reason: str
) -> None:
    key = tunnel_hub.user_with_key("alice")

    async def scenario() -> None:
        async with raw_tunnel(tunnel_hub, key) as rig:
            assert (await rig.beat("rig"))["status"] == 200
            await rig.ws.send_bytes(message)
            closed = await rig.closed()
            assert closed[0] == code and reason in closed[1], closed

    asyncio.run(scenario())
    # The hub lives on, and the provider is out of routing at once.
    with openai.OpenAI(base_url=tunnel_hub.api_base, api_key=key, max_retries=0) as sdk:
        wait_models(sdk, set(), timeout=5)
    assert "Traceback" not in tunnel_hub.log()


def test_a_full_tunnel_refuses_more_and_a_closed_one_fails_its_waiting_requests(
    tunnel_hub: HubProcess,
) -> None:
    key = tunnel_hub.user_with_key("alice")

    def chat() -> int:
        with openai.OpenAI(base_url=tunnel_hub.api_base, api_key=key, max_retries=0) as sdk:
            try:
                sdk.chat.completions.create(model="m1", messages=[])
            except openai.APIStatusError as exc:
                return exc.status_code
        return 200

    async def scenario() -> None:
        pool = concurrent.futures.ThreadPoolExecutor(3)
        async with raw_tunnel(tunnel_hub, key) as rig:
            assert (await rig.beat("rig"))["status"] == 200
            loop = asyncio.get_running_loop()
            waiting = [loop.run_in_executor(pool, chat) for _ in range(2)]
            frames = [await rig.frame() for _ in range(6)]  # OPEN, DATA, END each
            assert [f.type for f in frames].count(FrameType.OPEN) == 2
            third = await loop.run_in_executor(pool, chat)
            assert third == 502  # two streams is this hub's limit per tunnel
            await rig.ws.close()
            assert await asyncio.gather(*waiting) == [502, 502]
        pool.shutdown()

    asyncio.run(scenario())


def test_a_tunnel_replaced_by_a_new_one_for_its_provider_is_closed(tmp_path: Path) -> None:
    # Two agents run with one key and one name (or an agent redials while the hub still
    # holds its old connection): the newest tunnel carries the provider, and the one it
    # replaced is closed saying so. Left open, its next beat took the provider back onto a
    # tunnel already failed, and every request got a 502 while both agents were up.
    with start_hub(tmp_path, env={"INFERCLUB_HEARTBEAT_MIN_INTERVAL": "0"}) as hub:
        key = hub.user_with_key("alice")

        async def scenario() -> None:
            async with raw_tunnel(hub, key) as first, raw_tunnel(hub, key) as second:
                assert (await first.beat("rig"))["status"] == 200
                assert (await second.beat("rig"))["status"] == 200
                code, reason = await first.closed()
                assert code == tunnel.CLOSE_REFUSED and "replaced by a new tunnel" in reason
                sdk = openai.OpenAI(base_url=hub.api_base, api_key=key, max_retries=0)
                with sdk:
                    asking = asyncio.ensure_future(
                        asyncio.to_thread(sdk.chat.completions.create, model="m1", messages=[])
                    )
                    opened = await second.frame()
                    assert opened.type is FrameType.OPEN
                    await second.ws.send_bytes(
                        tunnel.encode(
                            FrameType.ERROR,
                            opened.stream,
                            b'{"status": 418, "error": {"message": "teapot"}}',
                        )
                    )
                    with pytest.raises(openai.APIStatusError) as caught:
                        await asyncio.wait_for(asking, 10)
                    assert caught.value.status_code == 418

        asyncio.run(scenario())
        assert "Traceback" not in hub.log()


def test_a_request_that_is_no_websocket_upgrade_gets_an_openai_error(
    tunnel_hub: HubProcess,
) -> None:
    key = tunnel_hub.user_with_key("alice")
    auth = {"Authorization": f"Bearer {key}"}
    old_version = {**UPGRADE, "Sec-WebSocket-Version": "6", **auth}
    for headers, status in ((auth, 400), (old_version, 426)):
        address = urllib.parse.urlsplit(tunnel_hub.url).netloc
        conn = http.client.HTTPConnection(address, timeout=10)
        try:  # http.client, not urllib: urllib replaces Connection with "close"
            conn.request("GET", tunnel.TUNNEL_PATH, headers=headers)
            response = conn.getresponse()
            assert response.status == status
            assert response.headers["X-Request-Id"].startswith("req_")
            body = json.loads(response.read())
        finally:
            conn.close()
        assert "WebSocket" in body["error"]["message"], body
        assert body["error"]["code"] == "websocket_upgrade_required"
    assert "Traceback" not in tunnel_hub.log()


def test_an_agents_error_mid_stream_reaches_the_client_in_its_words(
    tunnel_hub: HubProcess,
) -> None:
    # An agent stopping (or its engine failing) after the answer began sends an ERROR
    # frame: the client's final error event says what the agent said, not a generic
    # "connection broke".
    key = tunnel_hub.user_with_key("alice")

    def stream() -> str:
        with openai.OpenAI(base_url=tunnel_hub.api_base, api_key=key, max_retries=0) as sdk:
            chunks = sdk.chat.completions.create(model="m1", messages=[], stream=True)
            with pytest.raises(openai.APIError) as caught:
                for _ in chunks:
                    pass
        return caught.value.message

    async def scenario() -> None:
        async with raw_tunnel(tunnel_hub, key) as rig:
            assert (await rig.beat("rig"))["status"] == 200
            asking = asyncio.ensure_future(asyncio.to_thread(stream))
            opened = await rig.frame()
            head = {"status": 200, "headers": {"Content-Type": "text/event-stream"}}
            await rig.ws.send_bytes(tunnel.encode_json(FrameType.RESPONSE, opened.stream, head))
            chunk = b'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}\n\n'
            await rig.ws.send_bytes(tunnel.encode(FrameType.DATA, opened.stream, chunk))
            error = {"status": 503, "error": {"message": "The agent is shutting down."}}
            await rig.ws.send_bytes(tunnel.encode_json(FrameType.ERROR, opened.stream, error))
            message = await asyncio.wait_for(asking, 10)
            assert "The agent is shutting down." in message

    asyncio.run(scenario())


def test_a_bodiless_answer_is_relayed_without_a_body(tunnel_hub: HubProcess) -> None:
    # A 204 from the agent (its engine's) reached Tornado with an empty write, which it
    # refuses on a 204: the client got a 500 and the hub's log a traceback.
    key = tunnel_hub.user_with_key("alice")

    async def scenario() -> None:
        async with raw_tunnel(tunnel_hub, key) as rig:
            assert (await rig.beat("rig"))["status"] == 200
            asking = asyncio.ensure_future(asyncio.to_thread(post_status, tunnel_hub, key))
            opened = await rig.frame()
            head = {"status": 204, "headers": {}}
            await rig.ws.send_bytes(tunnel.encode_json(FrameType.RESPONSE, opened.stream, head))
            await rig.ws.send_bytes(tunnel.encode(FrameType.END, opened.stream))
            assert await asyncio.wait_for(asking, 10) == (204, b"")

    asyncio.run(scenario())
    assert "Traceback" not in tunnel_hub.log()


def post_status(hub: HubProcess, key: str) -> tuple[int, bytes]:
    """A chat request's status and body, whatever they are."""
    conn = http.client.HTTPConnection(urllib.parse.urlsplit(hub.url).netloc, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        conn.request("POST", "/v1/chat/completions", b'{"model": "m1"}', headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()
