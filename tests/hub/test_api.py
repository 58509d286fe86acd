"""The consumer API end to end: the official openai SDK -> hub subprocess -> fake agent."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.fakes.agent import FakeAgent
from tests.support.hubproc import HubProcess, start_hub

LLM = [{"name": "chat", "type": "llm", "engine": "vllm", "features": [], "models": ["m1"]}]


@pytest.fixture
def agent() -> Iterator[FakeAgent]:
    with FakeAgent(["m1"]) as a:
        yield a


@pytest.fixture
def alice(hub: HubProcess, agent: FakeAgent) -> str:
    key = hub.user_with_key("alice")
    status, body = hub.heartbeat(key, "rig", agent.url, LLM)
    assert status == 200, body
    return key


@pytest.fixture
def client() -> Iterator[Any]:
    """``client(hub, key)``: an openai SDK client for the hub, closed after the test."""
    made: list[openai.OpenAI] = []

    def make(hub: HubProcess, key: str, **kw: Any) -> openai.OpenAI:
        made.append(openai.OpenAI(base_url=hub.api_base, api_key=key, max_retries=0, **kw))
        return made[-1]

    yield make
    for c in made:
        c.close()


def wait_until(cond: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return bool(cond())


# ---------------------------------------------------------------------------- models


def test_models_list_and_retrieve(hub: HubProcess, alice: str, client: Any) -> None:
    c = client(hub, alice)
    models = c.models.list()
    assert [(m.id, m.model_extra["type"]) for m in models.data] == [("m1", "llm")]
    assert c.models.retrieve("m1").id == "m1"
    with pytest.raises(openai.NotFoundError) as exc:
        c.models.retrieve("nope")
    assert exc.value.code == "model_not_found"


def test_models_dedupe_across_providers_and_types(
    hub: HubProcess, alice: str, agent: FakeAgent, client: Any
) -> None:
    services = [
        {"name": "a", "type": "llm", "engine": "vllm", "models": ["m1", "shared"]},
        {"name": "b", "type": "stt", "engine": "whisper", "models": ["shared"]},
    ]
    assert hub.heartbeat(alice, "second-rig", agent.url, services)[0] == 200
    listed = sorted((m.id, m.model_extra["type"]) for m in client(hub, alice).models.list().data)
    assert listed == [("m1", "llm"), ("shared", "llm"), ("shared", "stt")]


# ------------------------------------------------------------------------------ chat


def test_chat_non_streaming_relays_and_records_usage(
    hub: HubProcess, alice: str, agent: FakeAgent, client: Any
) -> None:
    reply = client(hub, alice).chat.completions.create(
        model="m1", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 "
    assert reply.usage is not None and reply.usage.prompt_tokens == 5

    sent = agent.posts("/v1/chat/completions")[-1]
    assert sent.headers["X-Inferclub-Service"] == "chat"
    # The consumer's key never travels to the agent; the hub presents the provider's token.
    assert alice not in json.dumps(sent.headers)
    token = hub.heartbeat(alice, "rig", agent.url, LLM)[1]["callback_token"]
    assert sent.headers["Authorization"] == f"Bearer {token}"
    assert json.loads(sent.body) == {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}

    row = hub.wait_for_request_rows(1)[-1]
    assert (row["model"], row["type"], row["status"], row["endpoint"]) == (
        "m1",
        "llm",
        200,
        "/v1/chat/completions",
    )
    assert (row["prompt_tokens"], row["completion_tokens"]) == (5, 3)
    assert row["service"] == "chat" and row["cancelled"] == 0
    assert row["ttfb_ms"] is not None and row["duration_ms"] >= row["ttfb_ms"]


def test_stream_usage_added_for_history_and_stripped_for_client(
    hub: HubProcess, alice: str, agent: FakeAgent, client: Any
) -> None:
    chunks = list(
        client(hub, alice).chat.completions.create(
            model="m1", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok0 tok1 tok2 tok3 tok4 "
    assert all(c.usage is None for c in chunks), "the client did not ask for usage"
    assert json.loads(agent.posts("/v1/chat/completions")[-1].body)["stream_options"] == {
        "include_usage": True
    }
    row = hub.wait_for_request_rows(1)[-1]
    assert row["completion_tokens"] == 5 and row["status"] == 200


def test_stream_usage_relayed_when_asked(hub: HubProcess, alice: str, client: Any) -> None:
    chunks = list(
        client(hub, alice).chat.completions.create(
            model="m1",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5


def test_stream_headers_disable_proxy_buffering(hub: HubProcess, alice: str, client: Any) -> None:
    with client(hub, alice).chat.completions.with_streaming_response.create(
        model="m1", messages=[], stream=True
    ) as resp:
        assert resp.headers["x-accel-buffering"] == "no"
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["x-inferclub-provider"] == "rig"
        assert resp.headers["x-request-id"].startswith("req_")


def test_chunks_arrive_while_upstream_still_produces(
    hub: HubProcess, alice: str, agent: FakeAgent, client: Any
) -> None:
    agent.chunks, agent.chunk_delay = 6, 0.3
    stream = client(hub, alice).chat.completions.create(model="m1", messages=[], stream=True)
    seen_before_upstream_done = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and agent.completed_streams == 0:
            seen_before_upstream_done += 1
    assert seen_before_upstream_done >= 4, "chunks were buffered until the upstream finished"


def test_completions_streaming_and_not(hub: HubProcess, alice: str, client: Any) -> None:
    c = client(hub, alice)
    assert (
        c.completions.create(model="m1", prompt="x").choices[0].text == "tok0 tok1 tok2 tok3 tok4 "
    )
    parts = [
        p.choices[0].text
        for p in c.completions.create(model="m1", prompt="x", stream=True)
        if p.choices
    ]
    assert "".join(parts) == "tok0 tok1 tok2 tok3 tok4 "


# ---------------------------------------------------------------------------- errors


def test_missing_and_invalid_keys_are_401(hub: HubProcess, alice: str, client: Any) -> None:
    status, body = hub.post_json("/v1/chat/completions", b'{"model":"m1"}', None)
    assert status == 401 and body["error"]["code"] == "missing_api_key"
    for bad in ("sk-nope", alice[:-1] + ("A" if alice[-1] != "A" else "B"), "ic_" + "0" * 36):
        with pytest.raises(openai.AuthenticationError) as exc:
            client(hub, bad).models.list()
        assert exc.value.code == "invalid_api_key"
        assert bad not in exc.value.message, "a key is never echoed"
    assert alice not in hub.log() and alice[12:] not in hub.log()


def test_revoked_key_stops_working_within_a_second(
    hub: HubProcess, alice: str, client: Any
) -> None:
    c = client(hub, alice)
    assert c.models.list().data
    prefix = hub.cli("keys", "list", "alice").stdout.splitlines()[1].split()[1]
    hub.cli("keys", "revoke", prefix)

    def rejected() -> bool:
        try:
            c.models.list()
        except openai.AuthenticationError:
            return True
        return False

    assert wait_until(rejected, timeout=1.0)


def test_malformed_json_and_missing_model_are_400(hub: HubProcess, alice: str, client: Any) -> None:
    status, body = hub.post_json("/v1/chat/completions", b'{"model": ', alice)
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    status, body = hub.post_json("/v1/chat/completions", b"[1, 2]", alice)
    assert status == 400
    with pytest.raises(openai.BadRequestError) as exc:
        client(hub, alice).chat.completions.create(model="", messages=[])
    assert exc.value.param == "model"


def test_unknown_model_and_other_users_model_are_404(
    hub: HubProcess, alice: str, agent: FakeAgent, client: Any
) -> None:
    bob = hub.user_with_key("bob")
    for key in (alice, bob):
        with pytest.raises(openai.NotFoundError) as exc:
            client(hub, key).chat.completions.create(model="gpt-9", messages=[])
        assert exc.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as exc:
        client(hub, bob).chat.completions.create(model="m1", messages=[])
    assert exc.value.code == "model_not_found"
    assert "rig" not in exc.value.message
    assert client(hub, bob).models.list().data == []
    assert not agent.posts("/v1/chat/completions"), "bob's request never reaches alice's agent"


def test_same_model_other_type_says_so(
    hub: HubProcess, alice: str, agent: FakeAgent, client: Any
) -> None:
    svc = [{"name": "asr", "type": "stt", "engine": "whisper", "models": ["whisper-x"]}]
    hub.heartbeat(alice, "ears", agent.url, svc)
    with pytest.raises(openai.NotFoundError) as exc:
        client(hub, alice).chat.completions.create(model="whisper-x", messages=[])
    assert "served as stt, not llm" in exc.value.message


def test_users_are_isolated_even_with_the_same_provider_name(
    hub: HubProcess, alice: str, client: Any
) -> None:
    bob = hub.user_with_key("bob")
    with FakeAgent(["m1"]) as bobs_agent:
        assert hub.heartbeat(bob, "rig", bobs_agent.url, LLM)[0] == 200
        client(hub, bob).chat.completions.create(model="m1", messages=[])
        assert len(bobs_agent.posts("/v1/chat/completions")) == 1
        rows = hub.query("SELECT user_id, name FROM providers ORDER BY id")
        assert [tuple(r) for r in rows] == [(1, "rig"), (2, "rig")]


def test_body_over_the_limit_is_413_before_the_agent(
    tmp_path: Path, agent: FakeAgent, client: Any
) -> None:
    with start_hub(tmp_path, env={"INFERCLUB_MAX_JSON_BODY": "2000"}) as hub:
        key = hub.user_with_key("alice")
        hub.heartbeat(key, "rig", agent.url, LLM)
        with pytest.raises(openai.APIStatusError) as exc:
            client(hub, key).chat.completions.create(
                model="m1", messages=[{"role": "user", "content": "x" * 5000}]
            )
        assert exc.value.status_code == 413
        assert exc.value.body["type"] == "invalid_request_error"
        assert not agent.posts("/v1/chat/completions")
        # Far over the limit, the hub answers before reading the body at all.
        status, body = hub.post_json("/v1/chat/completions", b"x" * 100_000, key)
        assert status == 413 and body["error"]["code"] == "request_too_large"
        # The connection and the hub are still fine afterwards.
        assert client(hub, key).chat.completions.create(model="m1", messages=[]).choices


def test_offline_provider_is_503_and_leaves_the_model_list(
    tmp_path: Path, agent: FakeAgent, client: Any
) -> None:
    with start_hub(tmp_path, online_window=1) as hub:
        key = hub.user_with_key("alice")
        hub.heartbeat(key, "rig", agent.url, LLM)
        c = client(hub, key)
        assert [m.id for m in c.models.list().data] == ["m1"]
        time.sleep(1.1)
        assert c.models.list().data == []
        with pytest.raises(openai.InternalServerError) as exc:
            c.chat.completions.create(model="m1", messages=[])
        assert exc.value.status_code == 503 and exc.value.code == "provider_offline"
        hub.heartbeat(key, "rig", agent.url, LLM)
        assert c.chat.completions.create(model="m1", messages=[]).choices


def test_first_online_provider_in_registration_order_wins(
    hub: HubProcess, alice: str, client: Any
) -> None:
    with FakeAgent(["m1"]) as second:
        hub.heartbeat(alice, "second", second.url, LLM)
        client(hub, alice).chat.completions.create(model="m1", messages=[])
        assert not second.posts("/v1/chat/completions")


def test_unreachable_agent_is_502(hub: HubProcess, alice: str, client: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    hub.heartbeat(alice, "rig", dead, LLM)
    with pytest.raises(openai.InternalServerError) as exc:
        client(hub, alice).chat.completions.create(model="m1", messages=[])
    assert exc.value.status_code == 502 and exc.value.code == "upstream_unreachable"
    row = hub.wait_for_request_rows(1)[-1]
    assert row["status"] == 502 and row["error_type"] == "server_error"


def test_agent_timeout_is_504(tmp_path: Path, agent: FakeAgent, client: Any) -> None:
    with start_hub(tmp_path, env={"INFERCLUB_FIRST_BYTE_TIMEOUT": "0.5"}) as hub:
        key = hub.user_with_key("alice")
        hub.heartbeat(key, "rig", agent.url, LLM)
        agent.delay = 5
        with pytest.raises(openai.InternalServerError) as exc:
            client(hub, key).chat.completions.create(model="m1", messages=[])
        assert exc.value.status_code == 504


def test_agent_errors_are_relayed_in_openai_shape(
    hub: HubProcess, alice: str, agent: FakeAgent, client: Any
) -> None:
    vllm_error = {
        "error": {
            "message": "max_tokens is too large",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        }
    }
    agent.fail = (400, json.dumps(vllm_error).encode(), "application/json")
    with pytest.raises(openai.BadRequestError) as exc:
        client(hub, alice).chat.completions.create(model="m1", messages=[])
    assert exc.value.body["message"] == "max_tokens is too large"
    # vLLM's class name and integer status are not OpenAI's: the type for the status, no code.
    assert exc.value.code is None and exc.value.type == "invalid_request_error"

    agent.fail = (500, b"<html>Internal Server Error</html>", "text/html")
    with pytest.raises(openai.InternalServerError) as exc2:
        client(hub, alice).chat.completions.create(model="m1", messages=[])
    assert exc2.value.body == {
        "message": "<html>Internal Server Error</html>",
        "type": "server_error",
        "param": None,
        "code": None,
    }


def test_error_after_stream_start_is_a_final_error_event(
    hub: HubProcess, alice: str, agent: FakeAgent, client: Any
) -> None:
    agent.break_after = 3
    got: list[Any] = []
    with pytest.raises(openai.APIError) as exc:
        got.extend(client(hub, alice).chat.completions.create(model="m1", messages=[], stream=True))
    assert len(got) == 3
    assert "connection to the provider broke" in exc.value.message


def test_idle_stream_times_out_with_an_error_event(
    tmp_path: Path, agent: FakeAgent, client: Any
) -> None:
    with start_hub(tmp_path, env={"INFERCLUB_IDLE_TIMEOUT": "0.5"}) as hub:
        key = hub.user_with_key("alice")
        hub.heartbeat(key, "rig", agent.url, LLM)
        agent.stall_after = 2
        got: list[Any] = []
        with pytest.raises(openai.APIError) as exc:
            got.extend(
                client(hub, key).chat.completions.create(model="m1", messages=[], stream=True)
            )
        assert len(got) == 2 and "sent nothing for 0.5 s" in exc.value.message
        assert wait_until(lambda: agent.disconnects, 2), "the stalled upstream is closed"


# ------------------------------------------------------------------ cancellation


def test_client_disconnect_mid_stream_cancels_upstream(
    hub: HubProcess, alice: str, agent: FakeAgent, client: Any
) -> None:
    agent.stall_after = 2
    stream = client(hub, alice).chat.completions.create(model="m1", messages=[], stream=True)
    it = iter(stream)
    next(it), next(it)
    assert not agent.disconnects
    stream.close()
    assert wait_until(lambda: agent.disconnects, timeout=1.0), "upstream not closed within 1 s"
    row = hub.wait_for_request_rows(1)[-1]
    assert row["cancelled"] == 1


def test_client_disconnect_before_first_byte_cancels_upstream(
    hub: HubProcess, alice: str, agent: FakeAgent, client: Any
) -> None:
    agent.first_delay = 30
    with pytest.raises(openai.APITimeoutError):
        client(hub, alice, timeout=0.5).chat.completions.create(
            model="m1", messages=[], stream=True
        )
    assert wait_until(lambda: agent.disconnects, timeout=1.0), "upstream not closed within 1 s"
    row = hub.wait_for_request_rows(1)[-1]
    assert row["cancelled"] == 1 and row["ttfb_ms"] is None


def test_client_disconnect_cancels_a_non_streaming_request_too(
    hub: HubProcess, alice: str, agent: FakeAgent, client: Any
) -> None:
    agent.delay = 30  # a long generation, not streamed
    with pytest.raises(openai.APITimeoutError):
        client(hub, alice, timeout=0.5).chat.completions.create(model="m1", messages=[])
    assert wait_until(lambda: agent.disconnects, timeout=1.0), "upstream not closed within 1 s"
    assert hub.wait_for_request_rows(1)[-1]["cancelled"] == 1


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
def test_malformed_heartbeat_names_the_field(
    hub: HubProcess, payload: dict[str, Any], field: str
) -> None:
    key = hub.user_with_key("carol")
    status, body = hub.post_json("/v1/agent/heartbeat", payload, key)
    assert status == 400
    assert body["error"]["param"] == field and field in body["error"]["message"]


def test_bad_heartbeat_never_partly_overwrites(
    hub: HubProcess, alice: str, agent: FakeAgent, client: Any
) -> None:
    bad = LLM + [{"name": "x", "type": "nope", "models": ["other"]}]
    status, _ = hub.heartbeat(alice, "rig", "http://elsewhere:1/v1", bad)
    assert status == 400
    assert [m.id for m in client(hub, alice).models.list().data] == ["m1"]
    assert [r["callback_url"] for r in hub.query("SELECT callback_url FROM providers")] == [
        agent.url
    ]


def test_heartbeat_tells_an_agent_the_hub_cannot_reach_it(hub: HubProcess, alice: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    status, body = hub.heartbeat(alice, "behind-nat", dead, LLM)
    assert status == 200 and body["callback_reachable"] is False
    assert "Connect" in body["callback_error"]
    assert "cannot reach" in hub.log()


def test_heartbeat_response_and_not_json(hub: HubProcess, alice: str, agent: FakeAgent) -> None:
    status, body = hub.heartbeat(alice, "rig", agent.url, LLM)
    assert status == 200
    assert body["heartbeat_interval"] == 30 and body["online_window"] == 60
    assert body["provider_id"] == 1 and len(body["callback_token"]) >= 32
    assert body["callback_reachable"] is True and "callback_error" not in body
    probe = agent.requests[0]
    assert (probe.method, probe.path) == ("GET", "/v1/models")
    assert probe.headers["Authorization"] == f"Bearer {body['callback_token']}"
    status, body = hub.post_json("/v1/agent/heartbeat", b"not json", alice)
    assert status == 400


# -------------------------------------------------------------------- keys at rest


def test_only_a_keyed_hash_of_the_key_is_stored(hub: HubProcess, alice: str) -> None:
    dump = "\n".join(
        json.dumps([tuple(r) for r in hub.query(f"SELECT * FROM {t}")])
        for t in ("users", "api_keys", "providers", "services", "requests")
    )
    assert alice not in dump
    assert hashlib.sha256(alice.encode()).hexdigest() not in dump
    assert alice[:11] in dump, "the display prefix is kept for listings"
