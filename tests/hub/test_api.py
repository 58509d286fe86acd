"""The consumer API end to end: the official openai SDK -> the hub (in-process) -> fake agent."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from pathlib import Path
from typing import Any

import openai
import pytest
from tornado.ioloop import IOLoop

from tests.support.fakes.agent import FakeAgent
from tests.support.hubapp import HubApp, running_hub, wait_until

LLM = [{"name": "chat", "type": "llm", "engine": "vllm", "features": [], "models": ["m1"]}]


@pytest.fixture
def alice(hub_app: HubApp, fake_agent: FakeAgent, io_loop: IOLoop) -> str:
    """Alice's key; her agent `rig` serves `m1`."""

    async def register() -> str:
        key = await hub_app.user_with_key("alice")
        status, body = await hub_app.heartbeat(key, "rig", fake_agent.url, LLM)
        assert status == 200, body
        return key

    return io_loop.run_sync(register)


# ---------------------------------------------------------------------------- models


async def test_models_list_and_retrieve(hub_app: HubApp, alice: str) -> None:
    c = hub_app.client(alice)
    models = await c.models.list()
    assert [(m.id, m.model_extra["type"]) for m in models.data] == [("m1", "llm")]
    assert (await c.models.retrieve("m1")).id == "m1"
    with pytest.raises(openai.NotFoundError) as exc:
        await c.models.retrieve("nope")
    assert exc.value.code == "model_not_found"


async def test_models_dedupe_across_providers_and_types(
    hub_app: HubApp, alice: str, fake_agent: FakeAgent
) -> None:
    services = [
        {"name": "a", "type": "llm", "engine": "vllm", "models": ["m1", "shared"]},
        {"name": "b", "type": "stt", "engine": "whisper", "models": ["shared"]},
    ]
    assert (await hub_app.heartbeat(alice, "second-rig", fake_agent.url, services))[0] == 200
    listed = sorted(
        (m.id, m.model_extra["type"]) for m in (await hub_app.client(alice).models.list()).data
    )
    assert listed == [("m1", "llm"), ("shared", "llm"), ("shared", "stt")]


async def test_heartbeat_then_models_and_unknown_paths(hub_app: HubApp) -> None:
    key = await hub_app.user_with_key("alice")
    beat = [{"name": "s", "type": "tts", "engine": "openai", "models": ["voice"]}]
    status, body = await hub_app.heartbeat(key, "rig", "http://127.0.0.1:9/v1", beat)
    assert body["provider_id"] == 1
    status, body = await hub_app.get_json("/v1/models", key)
    assert [(m["id"], m["type"]) for m in body["data"]] == [("voice", "tts")]
    status, body = await hub_app.get_json("/v1/nothing-here", key)
    assert status == 404 and body["error"]["code"] == "unknown_url"
    status, _ = await hub_app.get_json("/v1/models", None)
    assert status == 401


# ------------------------------------------------------------------------------ chat


async def test_chat_non_streaming_relays_and_records_usage(
    hub_app: HubApp, alice: str, fake_agent: FakeAgent
) -> None:
    reply = await hub_app.client(alice).chat.completions.create(
        model="m1", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 "
    assert reply.usage is not None and reply.usage.prompt_tokens == 5

    sent = fake_agent.posts("/v1/chat/completions")[-1]
    assert sent.headers["X-Inferclub-Service"] == "chat"
    # The consumer's key never travels to the agent; the hub presents the provider's token.
    assert alice not in json.dumps(sent.headers)
    token = (await hub_app.heartbeat(alice, "rig", fake_agent.url, LLM))[1]["callback_token"]
    assert sent.headers["Authorization"] == f"Bearer {token}"
    assert json.loads(sent.body) == {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}

    row = (await hub_app.wait_for_request_rows(1))[-1]
    assert (row["model"], row["type"], row["status"], row["endpoint"]) == (
        "m1",
        "llm",
        200,
        "/v1/chat/completions",
    )
    assert (row["prompt_tokens"], row["completion_tokens"]) == (5, 3)
    assert row["service"] == "chat" and row["cancelled"] == 0
    assert row["ttfb_ms"] is not None and row["duration_ms"] >= row["ttfb_ms"]


async def test_stream_usage_added_for_history_and_stripped_for_client(
    hub_app: HubApp, alice: str, fake_agent: FakeAgent
) -> None:
    stream = await hub_app.client(alice).chat.completions.create(
        model="m1", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok0 tok1 tok2 tok3 tok4 "
    assert all(c.usage is None for c in chunks), "the client did not ask for usage"
    assert json.loads(fake_agent.posts("/v1/chat/completions")[-1].body)["stream_options"] == {
        "include_usage": True
    }
    row = (await hub_app.wait_for_request_rows(1))[-1]
    assert row["completion_tokens"] == 5 and row["status"] == 200


async def test_stream_usage_relayed_when_asked(hub_app: HubApp, alice: str) -> None:
    stream = await hub_app.client(alice).chat.completions.create(
        model="m1",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5


async def test_stream_headers_disable_proxy_buffering(hub_app: HubApp, alice: str) -> None:
    async with hub_app.client(alice).chat.completions.with_streaming_response.create(
        model="m1", messages=[], stream=True
    ) as resp:
        assert resp.headers["x-accel-buffering"] == "no"
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["x-inferclub-provider"] == "rig"
        assert resp.headers["x-request-id"].startswith("req_")


async def test_chunks_arrive_while_upstream_still_produces(
    hub_app: HubApp, alice: str, fake_agent: FakeAgent
) -> None:
    fake_agent.chunks, fake_agent.chunk_delay = 6, 0.3
    stream = await hub_app.client(alice).chat.completions.create(
        model="m1", messages=[], stream=True
    )
    seen_before_upstream_done = 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and fake_agent.completed_streams == 0:
            seen_before_upstream_done += 1
    assert seen_before_upstream_done >= 4, "chunks were buffered until the upstream finished"


async def test_completions_streaming_and_not(hub_app: HubApp, alice: str) -> None:
    c = hub_app.client(alice)
    assert (await c.completions.create(model="m1", prompt="x")).choices[
        0
    ].text == "tok0 tok1 tok2 tok3 tok4 "
    parts = [
        p.choices[0].text
        async for p in await c.completions.create(model="m1", prompt="x", stream=True)
        if p.choices
    ]
    assert "".join(parts) == "tok0 tok1 tok2 tok3 tok4 "


# ---------------------------------------------------------------------------- errors


async def test_missing_and_invalid_keys_are_401(hub_app: HubApp, alice: str) -> None:
    status, body = await hub_app.post_json("/v1/chat/completions", b'{"model":"m1"}', None)
    assert status == 401 and body["error"]["code"] == "missing_api_key"
    for bad in ("sk-nope", alice[:-1] + ("A" if alice[-1] != "A" else "B"), "ic_" + "0" * 36):
        with pytest.raises(openai.AuthenticationError) as exc:
            await hub_app.client(bad).models.list()
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
    assert exc.value.param == "model"


async def test_unknown_model_and_other_users_model_are_404(
    hub_app: HubApp, alice: str, fake_agent: FakeAgent
) -> None:
    bob = await hub_app.user_with_key("bob")
    for key in (alice, bob):
        with pytest.raises(openai.NotFoundError) as exc:
            await hub_app.client(key).chat.completions.create(model="gpt-9", messages=[])
        assert exc.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as exc:
        await hub_app.client(bob).chat.completions.create(model="m1", messages=[])
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
        assert exc.value.status_code == 503 and exc.value.code == "provider_offline"
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
    assert exc.value.status_code == 502 and exc.value.code == "upstream_unreachable"
    row = (await hub_app.wait_for_request_rows(1))[-1]
    assert row["status"] == 502 and row["error_type"] == "server_error"


async def test_agent_timeout_is_504(tmp_path: Path, fake_agent: FakeAgent) -> None:
    async with running_hub(tmp_path, first_byte_timeout=0.5) as hub:
        key = await hub.user_with_key("alice")
        await hub.heartbeat(key, "rig", fake_agent.url, LLM)
        fake_agent.delay = 5
        with pytest.raises(openai.InternalServerError) as exc:
            await hub.client(key).chat.completions.create(model="m1", messages=[])
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
    assert exc.value.body["message"] == "max_tokens is too large"
    assert exc.value.code == "400" and exc.value.type == "BadRequestError"

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


# ---------------------------------------------------------------------- heartbeat


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"callback_url": "http://x/v1"}, "name"),
        ({"name": "r"}, "callback_url"),
        ({"name": "r", "callback_url": "ftp://x"}, "callback_url"),
        ({"name": "r", "callback_url": "http://x:99999/v1"}, "callback_url"),
        ({"name": "r", "callback_url": "http://x/v1", "services": {}}, "services"),
        (
            {
                "name": "r",
                "callback_url": "http://x/v1",
                "services": [{"name": "a", "type": "video"}],
            },
            "services[0].type",
        ),
        (
            {
                "name": "r",
                "callback_url": "http://x/v1",
                "services": [{"name": "a"}, {"name": "a"}],
            },
            "services[1].name",
        ),
        (
            {
                "name": "r",
                "callback_url": "http://x/v1",
                "services": [{"name": "a", "models": ["ok", 3]}],
            },
            "services[0].models[1]",
        ),
        ({"name": "r", "callback_url": "http://x/v1", "health": []}, "health"),
    ],
)
async def test_malformed_heartbeat_names_the_field(
    hub_app: HubApp, payload: dict[str, Any], field: str
) -> None:
    key = await hub_app.user_with_key("carol")
    status, body = await hub_app.post_json("/v1/agent/heartbeat", payload, key)
    assert status == 400
    assert body["error"]["param"] == field and field in body["error"]["message"]


async def test_bad_heartbeat_never_partly_overwrites(
    hub_app: HubApp, alice: str, fake_agent: FakeAgent
) -> None:
    bad = LLM + [{"name": "x", "type": "nope", "models": ["other"]}]
    status, _ = await hub_app.heartbeat(alice, "rig", "http://elsewhere:1/v1", bad)
    assert status == 400
    assert [m.id for m in (await hub_app.client(alice).models.list()).data] == ["m1"]
    assert [r["callback_url"] for r in hub_app.query("SELECT callback_url FROM providers")] == [
        fake_agent.url
    ]


async def test_heartbeat_tells_an_agent_the_hub_cannot_reach_it(
    hub_app: HubApp, alice: str
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    status, body = await hub_app.heartbeat(alice, "behind-nat", dead, LLM)
    assert status == 200 and body["callback_reachable"] is False
    assert "Connect" in body["callback_error"]
    assert "cannot reach" in hub_app.log()


async def test_heartbeat_response_and_not_json(
    hub_app: HubApp, alice: str, fake_agent: FakeAgent
) -> None:
    status, body = await hub_app.heartbeat(alice, "rig", fake_agent.url, LLM)
    assert status == 200
    assert body["heartbeat_interval"] == 30 and body["online_window"] == 60
    assert body["provider_id"] == 1 and len(body["callback_token"]) >= 32
    assert body["callback_reachable"] is True and "callback_error" not in body
    probe = fake_agent.requests[0]
    assert (probe.method, probe.path) == ("GET", "/v1/models")
    assert probe.headers["Authorization"] == f"Bearer {body['callback_token']}"
    status, body = await hub_app.post_json("/v1/agent/heartbeat", b"not json", alice)
    assert status == 400


# -------------------------------------------------------------------- keys at rest


def test_only_a_keyed_hash_of_the_key_is_stored(hub_app: HubApp, alice: str) -> None:
    dump = "\n".join(
        json.dumps([tuple(r) for r in hub_app.query(f"SELECT * FROM {t}")])
        for t in ("users", "api_keys", "providers", "services", "requests")
    )
    assert alice not in dump
    assert hashlib.sha256(alice.encode()).hexdigest() not in dump
    assert alice[:11] in dump, "the display prefix is kept for listings"
