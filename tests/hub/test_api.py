"""The consumer API end to end: the official openai SDK -> the hub (in-process) -> fake agent.
Errors, limits and cancellation are in test_api_errors.py; the agent protocol in
test_heartbeat.py."""

from __future__ import annotations

import asyncio
import hashlib
import json

import openai
import pytest

from tests.support.fakes.agent import FakeAgent
from tests.support.hubapp import HubApp

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
    # The consumer's key never travels to the agent; the hub signs instead (its signature
    # is checked in tests/hub/test_signed_requests.py).
    assert alice not in json.dumps(sent.headers) and "Authorization" not in sent.headers
    assert {"X-Inferclub-Signature", "X-Inferclub-Timestamp", "X-Request-Id"} <= set(sent.headers)
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
    # The agent sends four words and then keeps the stream open without finishing it: they
    # must reach the client now. A hub that buffered until the upstream finished would hand
    # over nothing (no timed gaps between chunks to outwait: those took 2-3 s per run).
    fake_agent.chunks, fake_agent.stall_after = 6, 5  # the role chunk, then four words
    stream = await hub_app.client(alice).chat.completions.create(
        model="m1", messages=[], stream=True
    )
    seen: list[str] = []

    async def four_words() -> None:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                seen.append(chunk.choices[0].delta.content)
                if len(seen) == 4:
                    return

    try:
        await asyncio.wait_for(four_words(), timeout=30)
    except TimeoutError:
        raise AssertionError(f"chunks were held back until the upstream finished: {seen}") from None
    finally:
        await stream.close()
    assert seen == ["tok0 ", "tok1 ", "tok2 ", "tok3 "]
    assert fake_agent.completed_streams == 0


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


# -------------------------------------------------------------------- keys at rest


def test_only_a_keyed_hash_of_the_key_is_stored(hub_app: HubApp, alice: str) -> None:
    dump = "\n".join(
        json.dumps([tuple(r) for r in hub_app.query(f"SELECT * FROM {t}")])
        for t in ("users", "api_keys", "providers", "services", "requests")
    )
    assert alice not in dump
    assert hashlib.sha256(alice.encode()).hexdigest() not in dump
    assert alice[:11] in dump, "the display prefix is kept for listings"
