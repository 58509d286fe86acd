"""Errors, limits, timeouts and cancellation of the consumer API, as the openai SDK sees them
(the hub in-process, the agent side a fake)."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.fakes.agent import LLM, FakeAgent
from tests.support.hubapp import HubApp, request_id_of, running_hub, wait_until

# ---------------------------------------------------------------------------- errors


async def test_missing_and_invalid_keys_are_401(hub_app: HubApp, alice: str) -> None:
    status, body = await hub_app.post_json("/v1/chat/completions", b'{"model":"m1"}', None)
    assert status == 401 and body["error"]["code"] == "missing_api_key"
    for bad in ("sk-nope", alice[:-1] + ("A" if alice[-1] != "A" else "B"), "ic_" + "0" * 36):
        with pytest.raises(openai.AuthenticationError) as exc:
            await hub_app.client(bad).models.list()
        assert request_id_of(exc.value)
        assert exc.value.code == "invalid_api_key"
        assert bad not in exc.value.message, "a key is never echoed"
    assert alice not in hub_app.log() and alice[12:] not in hub_app.log()


async def test_revoked_key_stops_working_within_a_second(hub_app: HubApp, alice: str) -> None:
    c = hub_app.client(alice)
    assert (await c.models.list()).data
    await hub_app.revoke_elsewhere(alice)

    async def rejected() -> bool:
        try:
            await c.models.list()
        except openai.AuthenticationError:
            return True
        return False

    assert await wait_until(rejected, timeout=1.0)


async def test_malformed_json_and_missing_model_are_400(hub_app: HubApp, alice: str) -> None:
    status, body = await hub_app.post_json("/v1/chat/completions", b'{"model": ', alice)
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    status, body = await hub_app.post_json("/v1/chat/completions", b"[1, 2]", alice)
    assert status == 400
    with pytest.raises(openai.BadRequestError) as exc:
        await hub_app.client(alice).chat.completions.create(model="", messages=[])
    assert request_id_of(exc.value)
    assert exc.value.param == "model"


async def test_unknown_model_and_other_users_model_are_404(
    hub_app: HubApp, alice: str, fake_agent: FakeAgent
) -> None:
    bob = await hub_app.user_with_key("bob")
    for key in (alice, bob):
        with pytest.raises(openai.NotFoundError) as exc:
            await hub_app.client(key).chat.completions.create(model="gpt-9", messages=[])
        assert request_id_of(exc.value)
        assert exc.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as exc:
        await hub_app.client(bob).chat.completions.create(model="m1", messages=[])
    assert request_id_of(exc.value)
    assert exc.value.code == "model_not_found"
    assert "rig" not in exc.value.message
    assert (await hub_app.client(bob).models.list()).data == []
    assert not fake_agent.posts("/v1/chat/completions"), "bob's request never reaches alice's agent"


async def test_same_model_other_type_says_so(
    hub_app: HubApp, alice: str, fake_agent: FakeAgent
) -> None:
    svc = [{"name": "asr", "type": "stt", "engine": "whisper", "models": ["whisper-x"]}]
    await hub_app.heartbeat(alice, "ears", fake_agent.url, svc)
    with pytest.raises(openai.NotFoundError) as exc:
        await hub_app.client(alice).chat.completions.create(model="whisper-x", messages=[])
    assert request_id_of(exc.value)
    assert "served as stt, not llm" in exc.value.message


async def test_users_are_isolated_even_with_the_same_provider_name(
    hub_app: HubApp, alice: str
) -> None:
    bob = await hub_app.user_with_key("bob")
    with FakeAgent(["m1"]) as bobs_agent:
        assert (await hub_app.heartbeat(bob, "rig", bobs_agent.url, LLM))[0] == 200
        await hub_app.client(bob).chat.completions.create(model="m1", messages=[])
        assert len(bobs_agent.posts("/v1/chat/completions")) == 1
        rows = hub_app.query("SELECT user_id, name FROM providers ORDER BY id")
        assert [tuple(r) for r in rows] == [(1, "rig"), (2, "rig")]


async def test_body_over_the_limit_is_413_before_the_agent(
    tmp_path: Path, fake_agent: FakeAgent
) -> None:
    async with running_hub(tmp_path, max_json_body=2000) as hub:
        key = await hub.user_with_key("alice")
        await hub.heartbeat(key, "rig", fake_agent.url, LLM)
        with pytest.raises(openai.APIStatusError) as exc:
            await hub.client(key).chat.completions.create(
                model="m1", messages=[{"role": "user", "content": "x" * 5000}]
            )
        assert request_id_of(exc.value)
        assert exc.value.status_code == 413
        assert exc.value.body["type"] == "invalid_request_error"
        assert not fake_agent.posts("/v1/chat/completions")
        # Far over the limit, the hub answers before reading the body at all.
        status, body = await hub.post_json("/v1/chat/completions", b"x" * 100_000, key)
        assert status == 413 and body["error"]["code"] == "request_too_large"
        # The connection and the hub are still fine afterwards.
        assert (await hub.client(key).chat.completions.create(model="m1", messages=[])).choices


async def test_offline_provider_is_503_and_leaves_the_model_list(
    tmp_path: Path, fake_agent: FakeAgent
) -> None:
    async with running_hub(tmp_path, online_window=1) as hub:
        key = await hub.user_with_key("alice")
        await hub.heartbeat(key, "rig", fake_agent.url, LLM)
        c = hub.client(key)
        assert [m.id for m in (await c.models.list()).data] == ["m1"]
        await asyncio.sleep(1.1)
        assert (await c.models.list()).data == []
        with pytest.raises(openai.InternalServerError) as exc:
            await c.chat.completions.create(model="m1", messages=[])
        assert request_id_of(exc.value)
        assert exc.value.status_code == 503 and exc.value.code == "model_unavailable"
        assert "rig: agent gone" in exc.value.message
        assert exc.value.response.headers["Retry-After"] == "5"
        assert exc.value.response.headers["X-Request-Id"].startswith("req_")
        await hub.heartbeat(key, "rig", fake_agent.url, LLM)
        assert (await c.chat.completions.create(model="m1", messages=[])).choices


async def test_first_online_provider_in_registration_order_wins(
    hub_app: HubApp, alice: str
) -> None:
    with FakeAgent(["m1"]) as second:
        await hub_app.heartbeat(alice, "second", second.url, LLM)
        await hub_app.client(alice).chat.completions.create(model="m1", messages=[])
        assert not second.posts("/v1/chat/completions")


async def test_unreachable_agent_is_502(hub_app: HubApp, alice: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    await hub_app.heartbeat(alice, "rig", dead, LLM)
    with pytest.raises(openai.InternalServerError) as exc:
        await hub_app.client(alice).chat.completions.create(model="m1", messages=[])
    assert request_id_of(exc.value)
    assert exc.value.status_code == 502 and exc.value.code == "upstream_unreachable"
    assert exc.value.response.headers["X-InferClub-Provider"] == "rig"
    row = (await hub_app.wait_for_request_rows(1))[-1]
    assert row["status"] == 502 and row["error_type"] == "server_error"


async def test_agent_timeout_is_504(tmp_path: Path, fake_agent: FakeAgent) -> None:
    async with running_hub(tmp_path, first_byte_timeout=0.5) as hub:
        key = await hub.user_with_key("alice")
        await hub.heartbeat(key, "rig", fake_agent.url, LLM)
        fake_agent.delay = 5
        with pytest.raises(openai.InternalServerError) as exc:
            await hub.client(key).chat.completions.create(model="m1", messages=[])
        assert request_id_of(exc.value)
        assert exc.value.status_code == 504


async def test_agent_errors_are_relayed_in_openai_shape(
    hub_app: HubApp, alice: str, fake_agent: FakeAgent
) -> None:
    vllm_error = {
        "error": {
            "message": "max_tokens is too large",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        }
    }
    fake_agent.fail = (400, json.dumps(vllm_error).encode(), "application/json")
    with pytest.raises(openai.BadRequestError) as exc:
        await hub_app.client(alice).chat.completions.create(model="m1", messages=[])
    assert request_id_of(exc.value)
    assert exc.value.body["message"] == "max_tokens is too large"
    # vLLM's class name and integer status are not OpenAI's: the type for the status, no code.
    assert exc.value.code is None and exc.value.type == "invalid_request_error"

    fake_agent.fail = (500, b"<html>Internal Server Error</html>", "text/html")
    with pytest.raises(openai.InternalServerError) as exc2:
        await hub_app.client(alice).chat.completions.create(model="m1", messages=[])
    assert exc2.value.body == {
        "message": "<html>Internal Server Error</html>",
        "type": "server_error",
        "param": None,
        "code": None,
    }


async def test_error_after_stream_start_is_a_final_error_event(
    hub_app: HubApp, alice: str, fake_agent: FakeAgent
) -> None:
    fake_agent.break_after = 3
    got: list[Any] = []
    stream = await hub_app.client(alice).chat.completions.create(
        model="m1", messages=[], stream=True
    )
    with pytest.raises(openai.APIError) as exc:
        async for chunk in stream:
            got.append(chunk)
    assert len(got) == 3
    assert "connection to the provider broke" in exc.value.message


async def test_idle_stream_times_out_with_an_error_event(
    tmp_path: Path, fake_agent: FakeAgent
) -> None:
    async with running_hub(tmp_path, idle_timeout=0.5) as hub:
        key = await hub.user_with_key("alice")
        await hub.heartbeat(key, "rig", fake_agent.url, LLM)
        fake_agent.stall_after = 2
        got: list[Any] = []
        stream = await hub.client(key).chat.completions.create(model="m1", messages=[], stream=True)
        with pytest.raises(openai.APIError) as exc:
            async for chunk in stream:
                got.append(chunk)
        assert len(got) == 2 and "sent nothing for 0.5 s" in exc.value.message
        assert await wait_until(lambda: fake_agent.disconnects, 2), "the stalled upstream is closed"


# ------------------------------------------------------------------ cancellation


async def test_client_disconnect_mid_stream_cancels_upstream(
    hub_app: HubApp, alice: str, fake_agent: FakeAgent
) -> None:
    fake_agent.stall_after = 2
    stream = await hub_app.client(alice).chat.completions.create(
        model="m1", messages=[], stream=True
    )
    it = stream.__aiter__()
    await it.__anext__(), await it.__anext__()
    assert not fake_agent.disconnects
    await stream.close()
    assert await wait_until(lambda: fake_agent.disconnects, timeout=1.0), (
        "upstream not closed within 1 s"
    )
    row = (await hub_app.wait_for_request_rows(1))[-1]
    assert row["cancelled"] == 1


async def test_client_disconnect_before_first_byte_cancels_upstream(
    hub_app: HubApp, alice: str, fake_agent: FakeAgent
) -> None:
    fake_agent.first_delay = 30
    with pytest.raises(openai.APITimeoutError):
        await hub_app.client(alice, timeout=0.5).chat.completions.create(
            model="m1", messages=[], stream=True
        )
    assert await wait_until(lambda: fake_agent.disconnects, timeout=1.0), (
        "upstream not closed within 1 s"
    )
    row = (await hub_app.wait_for_request_rows(1))[-1]
    assert row["cancelled"] == 1 and row["ttfb_ms"] is None


async def test_client_disconnect_cancels_a_non_streaming_request_too(
    hub_app: HubApp, alice: str, fake_agent: FakeAgent
) -> None:
    fake_agent.delay = 30  # a long generation, not streamed
    with pytest.raises(openai.APITimeoutError):
        await hub_app.client(alice, timeout=0.5).chat.completions.create(model="m1", messages=[])
    assert await wait_until(lambda: fake_agent.disconnects, timeout=1.0), (
        "upstream not closed within 1 s"
    )
    assert (await hub_app.wait_for_request_rows(1))[-1]["cancelled"] == 1
