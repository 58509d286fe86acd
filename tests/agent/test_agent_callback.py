"""The callback server, driven the way the hub drives it: token, service header, raw bodies."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import openai
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from inferclub.signing import HubSigner
from inferclub.testing import AgentProcess, AgentResponse, FakeHub, StartAgent, send_to_agent
from tests.support.agentstream import open_chat_stream, sdk_client
from tests.support.fakes import FakeLmStudio, FakeSpeaches, FakeVllm, FakeWhisperCpp

pytestmark = pytest.mark.subprocess


def vllm_service(fake: FakeVllm, **extra: Any) -> dict[str, Any]:
    return {"name": "vllm-qwen", "engine": "vllm", "url": fake.url, **extra}


def signed(hub: FakeHub, callback_url: str, *args: Any, **kwargs: Any) -> AgentResponse:
    """`send_to_agent`, signed by ``hub`` for its provider id as the hub signs."""
    return send_to_agent(
        callback_url, *args, signer=hub.signer, provider_id=hub.provider_id, **kwargs
    )


def assert_openai_error(body: bytes) -> dict[str, Any]:
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert err["code"] is None or isinstance(err["code"], str)
    return err


def registered(agent: AgentProcess, fake_hub: FakeHub, name: str = "vllm-qwen") -> None:
    fake_hub.wait_for(lambda b: any(s["name"] == name for s in b["services"]))
    agent.wait_registered()


# -- authentication ------------------------------------------------------------------------------


def test_only_requests_signed_by_the_hub_for_this_provider_are_served(
    start_agent: StartAgent, fake_hub: FakeHub, vllm: FakeVllm
) -> None:
    agent = start_agent(vllm_service(vllm))
    registered(agent, fake_hub)
    chat = json.dumps({"model": "Qwen/Qwen3-8B", "messages": [{"role": "user", "content": "hi"}]})
    body = chat.encode()
    target = "/v1/chat/completions"

    def headers(signer: HubSigner, provider: int = fake_hub.provider_id) -> dict[str, str]:
        request_id = f"req_{uuid.uuid4().hex[:24]}"
        return signer.sign("POST", target, request_id, str(provider), body, service="vllm-qwen")

    def send(extra: dict[str, str], sent: bytes = body) -> tuple[int, dict[str, Any]]:
        status, _, answer = send_to_agent(
            agent.callback_url,
            "POST",
            "/chat/completions",
            sent,
            service="vllm-qwen",
            headers=extra,
        )
        return status, assert_openai_error(answer) if status != 200 else json.loads(answer)

    stranger = HubSigner(Ed25519PrivateKey.generate())
    late = HubSigner(fake_hub.signing_key, clock=lambda: time.time() - 61)
    early = HubSigner(fake_hub.signing_key, clock=lambda: time.time() + 30)
    attempts = {
        "unsigned": ({}, "signature_missing"),
        "a bearer token instead": ({"Authorization": "Bearer cbt_x"}, "signature_missing"),
        "another hub's key": (headers(stranger), "signature_invalid"),
        "signed for another provider": (headers(fake_hub.signer, 8), "signature_invalid"),
        "older than 60 s": (headers(late), "signature_expired"),
        "dated 30 s ahead": (headers(early), "signature_from_future"),
    }
    for what, (extra, code) in attempts.items():
        status, error = send(extra)
        assert (status, error["type"], error["code"]) == (401, "invalid_request_error", code), what
    # A changed body fails the signature too (headers of this body, another body sent).
    status, error = send(headers(fake_hub.signer), chat.replace("hi", "hello").encode())
    assert (status, error["code"]) == (401, "signature_invalid")
    assert vllm.posts("/v1/chat/completions") == [], "nothing refused reached the engine"

    good = headers(fake_hub.signer)
    status, answer = send(good)
    assert status == 200
    assert answer["choices"][0]["message"]["content"].startswith("tok0")
    # Captured and sent again: a replay.
    status, error = send(good)
    assert (status, error["code"]) == (401, "signature_replayed")
    assert len(vllm.posts("/v1/chat/completions")) == 1
    # The signature headers stay between hub and agent.
    forwarded = vllm.posts("/v1/chat/completions")[0].headers
    assert not [name for name in forwarded if name.lower().startswith("x-inferclub-")]
    assert "Authorization" not in forwarded


def test_a_request_sent_to_another_service_than_signed_is_refused(
    start_agent: StartAgent, fake_hub: FakeHub, vllm: FakeVllm
) -> None:
    """The service header is signed: someone on the path who changes only which of the
    agent's services serves a captured request gets 401, and no engine sees it."""
    agent = start_agent(vllm_service(vllm), vllm_service(vllm, name="vllm-other"))
    registered(agent, fake_hub, "vllm-other")
    chat = {"model": "Qwen/Qwen3-8B", "messages": [{"role": "user", "content": "hi"}]}
    raw = json.dumps(chat).encode()
    target = "/v1/chat/completions"
    sign = fake_hub.signer.sign
    headers = sign(
        "POST", target, "req_service1", str(fake_hub.provider_id), raw, service="vllm-qwen"
    )
    for service in ("vllm-other", None):
        status, _, body = send_to_agent(
            agent.callback_url, "POST", "/chat/completions", raw, service=service, headers=headers
        )
        assert (status, assert_openai_error(body)["code"]) == (401, "signature_invalid"), service
    assert vllm.posts("/v1/chat/completions") == []
    status, _, _ = send_to_agent(
        agent.callback_url, "POST", "/chat/completions", raw, service="vllm-qwen", headers=headers
    )
    assert status == 200
    assert len(vllm.posts("/v1/chat/completions")) == 1


def test_503_until_a_heartbeat_succeeds(
    start_agent: StartAgent, fake_hub: FakeHub, vllm: FakeVllm
) -> None:
    fake_hub.fail_next = 1_000
    agent = start_agent(vllm_service(vllm))
    agent.wait_log("heartbeat to")
    status, _, body = signed(
        fake_hub, agent.callback_url, "POST", "/chat/completions", {"model": "Qwen/Qwen3-8B"}
    )
    assert status == 503
    assert "not registered" in assert_openai_error(body)["message"]
    fake_hub.fail_next = 0
    registered(agent, fake_hub)
    status, _, _ = signed(
        fake_hub,
        agent.callback_url,
        "POST",
        "/chat/completions",
        {"model": "Qwen/Qwen3-8B", "messages": []},
        service="vllm-qwen",
    )
    assert status == 200


# -- forwarding ----------------------------------------------------------------------------------


def test_chat_with_the_openai_sdk_streaming_and_not(
    start_agent: StartAgent, fake_hub: FakeHub, vllm: FakeVllm
) -> None:
    agent = start_agent(vllm_service(vllm))
    registered(agent, fake_hub)
    with sdk_client(fake_hub, agent.url, "vllm-qwen") as sdk:
        reply = sdk.chat.completions.create(
            model="Qwen/Qwen3-8B", messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 "
        assert reply.usage is not None and reply.usage.total_tokens == 8

        stream = sdk.chat.completions.create(
            model="Qwen/Qwen3-8B",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok0 tok1 tok2 tok3 tok4 "
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    # The body reached the engine unchanged.
    sent = vllm.posts("/v1/chat/completions")[-1].json()
    assert sent["stream_options"] == {"include_usage": True}


def test_chunks_are_relayed_as_they_arrive(
    start_agent: StartAgent, fake_hub: FakeHub, vllm: FakeVllm
) -> None:
    vllm.chunks, vllm.chunk_delay = 4, 0.4
    agent = start_agent(vllm_service(vllm))
    registered(agent, fake_hub)
    conn = open_chat_stream(fake_hub, agent.url, "vllm-qwen")
    start = time.monotonic()
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Type", "").startswith("text/event-stream")
    arrivals = []
    for line in resp:
        if line.startswith(b"data: "):
            arrivals.append((time.monotonic() - start, line))
    conn.close()
    assert arrivals[-1][1].strip() == b"data: [DONE]"
    # 7 events spread over ~2.4 s: the first ones arrived long before the last.
    assert arrivals[-1][0] - arrivals[0][0] > 1.5
    assert arrivals[1][0] < 1.0


def test_alias_is_rewritten_and_api_key_sent(start_agent: StartAgent, fake_hub: FakeHub) -> None:
    with FakeVllm(["Qwen/Qwen3-30B-A3B"], api_key="engine-secret") as fake:
        agent = start_agent(
            {
                "name": "qwen",
                "engine": "vllm",
                "url": fake.url,
                "api_key": "engine-secret",
                "models": [{"hf": "Qwen/Qwen3-30B-A3B", "alias": "qwen3"}],
            }
        )
        beat = fake_hub.wait_for(lambda b: bool(b["services"]))
        assert beat["services"][0]["models"] == ["qwen3"]
        # No header: the agent picks the service by model and type.
        with sdk_client(fake_hub, agent.url) as sdk:
            reply = sdk.chat.completions.create(
                model="qwen3", messages=[{"role": "user", "content": "hi"}]
            )
        assert reply.model == "Qwen/Qwen3-30B-A3B"
        sent = fake.posts("/v1/chat/completions")[-1]
        assert sent.json()["model"] == "Qwen/Qwen3-30B-A3B"
        assert sent.headers["Authorization"] == "Bearer engine-secret"
    assert "engine-secret" not in agent.stderr


def test_service_selection_without_header(
    start_agent: StartAgent, fake_hub: FakeHub, vllm: FakeVllm
) -> None:
    with FakeLmStudio() as lms:
        agent = start_agent(
            vllm_service(vllm),
            {"name": "lms-embed", "type": "embedding", "engine": "lmstudio", "url": lms.url},
        )
        registered(agent, fake_hub, "lms-embed")
        with sdk_client(fake_hub, agent.url) as sdk:
            emb = sdk.embeddings.create(
                model="text-embedding-nomic-embed-text-v1.5",
                input=["a", "b"],
                encoding_format="float",
            )
        assert len(emb.data) == 2
        assert lms.posts("/v1/embeddings")

        # The embedding model is not an llm: no chat service serves it.
        status, _, body = signed(
            fake_hub,
            agent.callback_url,
            "POST",
            "/chat/completions",
            {"model": "text-embedding-nomic-embed-text-v1.5", "messages": []},
        )
        assert status == 404
        assert assert_openai_error(body)["code"] == "model_not_found"
        status, _, body = signed(
            fake_hub, agent.callback_url, "POST", "/chat/completions", {"messages": []}
        )
        assert status == 400
        assert assert_openai_error(body)["param"] == "model"
        status, _, body = signed(
            fake_hub,
            agent.callback_url,
            "POST",
            "/chat/completions",
            {"model": "x"},
            service="no-such-service",
        )
        assert status == 404
        assert assert_openai_error(body)["code"] == "service_not_found"

        status, _, body = signed(fake_hub, agent.callback_url, "GET", "/models", None)
        assert status == 200
        ids = {m["id"]: m["type"] for m in json.loads(body)["data"]}
        assert ids == {"Qwen/Qwen3-8B": "llm", "text-embedding-nomic-embed-text-v1.5": "embedding"}


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("flat", [False, True])
def test_vllm_errors_come_back_in_openai_shape(
    start_agent: StartAgent, fake_hub: FakeHub, vllm: FakeVllm, flat: bool
) -> None:
    vllm.flat_errors = flat
    agent = start_agent(vllm_service(vllm))
    registered(agent, fake_hub)
    with (
        sdk_client(fake_hub, agent.url, "vllm-qwen") as sdk,
        pytest.raises(openai.NotFoundError) as info,
    ):
        sdk.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    err = info.value.body
    assert isinstance(err, dict)
    assert err["message"] == "The model `nope` does not exist."
    assert err["type"] == "invalid_request_error"
    assert err["code"] == "model_not_found"  # vLLM's integer 404, normalised


def test_string_and_detail_errors_are_normalised(
    start_agent: StartAgent, fake_hub: FakeHub
) -> None:
    with FakeWhisperCpp() as wcpp, FakeSpeaches() as sp:
        agent = start_agent(
            {
                "name": "wcpp",
                "type": "stt",
                "engine": "whisper",
                "url": wcpp.url,
                "options": {"api": "whispercpp"},
                "models": [{"id": "whisper-1"}],
            },
            {"name": "speaches", "type": "stt", "engine": "whisper", "url": sp.url},
        )
        registered(agent, fake_hub, "speaches")
        boundary = "b0und4ry"
        no_file = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
            f"whisper-1\r\n--{boundary}--\r\n"
        ).encode()
        ctype = f"multipart/form-data; boundary={boundary}"
        status, _, body = signed(
            fake_hub,
            agent.callback_url,
            "POST",
            "/audio/transcriptions",
            no_file,
            service="wcpp",
            content_type=ctype,
        )
        assert status == 400
        err = assert_openai_error(body)
        assert err["message"] == "no 'file' field in the request"
        assert err["type"] == "invalid_request_error"

        status, _, body = signed(
            fake_hub,
            agent.callback_url,
            "POST",
            "/audio/transcriptions",
            no_file,
            service="speaches",
            content_type=ctype,
        )
        assert status == 422
        err = assert_openai_error(body)
        assert err["message"] == "body.file: Field required"
        assert err["param"] == "file"


def test_down_engine_gives_502_naming_the_service(
    start_agent: StartAgent, fake_hub: FakeHub, vllm: FakeVllm
) -> None:
    agent = start_agent(vllm_service(vllm))
    registered(agent, fake_hub)
    vllm.stop()
    count = len(fake_hub.beats)
    status, _, body = signed(
        fake_hub,
        agent.callback_url,
        "POST",
        "/chat/completions",
        {"model": "Qwen/Qwen3-8B", "messages": []},
        service="vllm-qwen",
    )
    assert status == 502
    err = assert_openai_error(body)
    assert "'vllm-qwen'" in err["message"] and "unreachable" in err["message"]
    assert err["code"] == "engine_unreachable"
    # The failure is announced right away: the next beat no longer advertises the service.
    fake_hub.wait_for(lambda b: b["services"] == [], timeout=5, after=count)


def test_max_concurrency_gives_429(
    start_agent: StartAgent, fake_hub: FakeHub, vllm: FakeVllm
) -> None:
    vllm.chunks, vllm.chunk_delay = 60, 0.1  # far longer than the agent waits for a slot
    agent = start_agent(vllm_service(vllm, max_concurrency=1))
    registered(agent, fake_hub)
    slow = open_chat_stream(fake_hub, agent.url, "vllm-qwen")
    resp = slow.getresponse()
    resp.readline()  # the stream is under way
    status, _, body = signed(
        fake_hub,
        agent.callback_url,
        "POST",
        "/chat/completions",
        {"model": "Qwen/Qwen3-8B", "messages": []},
        service="vllm-qwen",
    )
    assert status == 429
    err = assert_openai_error(body)
    assert err["type"] == "rate_limit_error" and "max_concurrency" in err["message"]
    resp.read()
    slow.close()
    # The slot is free again once the stream is over.
    status, _, _ = signed(
        fake_hub,
        agent.callback_url,
        "POST",
        "/chat/completions",
        {"model": "Qwen/Qwen3-8B", "messages": []},
        service="vllm-qwen",
    )
    assert status == 200


def test_service_timeout_gives_504(
    start_agent: StartAgent, fake_hub: FakeHub, vllm: FakeVllm
) -> None:
    vllm.first_delay = 3
    agent = start_agent(vllm_service(vllm, timeout=0.5))
    registered(agent, fake_hub)
    start = time.monotonic()
    status, _, body = signed(
        fake_hub,
        agent.callback_url,
        "POST",
        "/chat/completions",
        {"model": "Qwen/Qwen3-8B", "messages": [], "stream": True},
        service="vllm-qwen",
    )
    assert status == 504, body
    assert time.monotonic() - start < 2.5
    assert assert_openai_error(body)["type"] == "timeout_error"


# -- cancellation --------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["mid-stream", "before-first-byte"])
def test_hub_disconnect_closes_the_engine_connection(
    start_agent: StartAgent, fake_hub: FakeHub, vllm: FakeVllm, phase: str
) -> None:
    vllm.chunks, vllm.chunk_delay = 100, 0.1
    if phase == "before-first-byte":
        vllm.first_delay = 30
    agent = start_agent(vllm_service(vllm))
    registered(agent, fake_hub)
    conn = open_chat_stream(fake_hub, agent.url, "vllm-qwen")
    if phase == "mid-stream":
        resp = conn.getresponse()
        assert resp.readline().startswith(b"data: ")
    else:
        deadline = time.monotonic() + 10
        while not vllm.posts("/v1/chat/completions") and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
    assert vllm.disconnects == []
    closed_at = time.monotonic()
    assert conn.sock is not None
    conn.sock.close()
    conn.close()
    waited = vllm.seconds_until_disconnect(closed_at)
    assert waited is not None, "the engine never saw the connection close"
    assert waited < 1.0
    assert vllm.completed_streams == 0
    agent.wait_log("hub disconnected")


# -- uploads -------------------------------------------------------------------------------------


def multipart(fields: dict[str, str], audio: bytes, boundary: str) -> bytes:
    out = b""
    for name, value in fields.items():
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        ).encode()
    out += (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        + audio
        + b"\r\n"
    )
    return out + f"--{boundary}--\r\n".encode()


def test_whisper_cpp_uploads_go_to_inference_byte_for_byte(
    start_agent: StartAgent, fake_hub: FakeHub, whispercpp: FakeWhisperCpp
) -> None:
    agent = start_agent(
        {
            "name": "wcpp",
            "type": "stt",
            "engine": "whisper",
            "url": whispercpp.url,
            "options": {"api": "whispercpp"},
            "models": [{"id": "whisper-1"}],
        }
    )
    registered(agent, fake_hub, "wcpp")
    audio = bytes(range(256)) * 64 + b"\r\n--not-a-boundary\r\n" + bytes(1000)
    boundary = uuid.uuid4().hex
    ctype = f"multipart/form-data; boundary={boundary}"
    body = multipart({"model": "whisper-1", "response_format": "text"}, audio, boundary)

    status, headers, out = signed(
        fake_hub,
        agent.callback_url,
        "POST",
        "/audio/transcriptions",
        body,
        service="wcpp",
        content_type=ctype,
    )
    assert status == 200
    assert headers["content-type"] == "text/plain; charset=utf-8"  # not whisper.cpp's text/html
    assert out.decode() == whispercpp.text
    sent = whispercpp.posts("/inference")[-1]
    assert sent.body == body
    assert sent.headers["Content-Type"] == ctype

    # The openai SDK's json transcription, through the default path choice (no header).
    with sdk_client(fake_hub, agent.url) as sdk:
        result = sdk.audio.transcriptions.create(model="whisper-1", file=("a.wav", audio))
    assert result.text == whispercpp.text

    # Translations are whisper.cpp's /inference with translate=true.
    status, _, out = signed(
        fake_hub,
        agent.callback_url,
        "POST",
        "/audio/translations",
        body,
        service="wcpp",
        content_type=ctype,
    )
    assert status == 200 and out.decode().startswith(" [translated]")


def test_multipart_alias_rewrites_only_the_model_field(
    start_agent: StartAgent, fake_hub: FakeHub, vllm: FakeVllm
) -> None:
    agent = start_agent(
        {
            "name": "asr",
            "type": "stt",
            "engine": "vllm",
            "url": vllm.url,
            "models": [{"id": "Qwen/Qwen3-8B", "alias": "asr-small"}],
        }
    )
    registered(agent, fake_hub, "asr")
    audio = b"RIFF" + bytes(range(256)) * 40
    boundary = uuid.uuid4().hex
    body = multipart({"model": "asr-small", "language": "en"}, audio, boundary)
    status, _, out = signed(
        fake_hub,
        agent.callback_url,
        "POST",
        "/audio/transcriptions",
        body,
        content_type=f"multipart/form-data; boundary={boundary}",
    )
    assert status == 200, out
    assert json.loads(out)["text"] == vllm.transcript
    sent = vllm.posts("/v1/audio/transcriptions")[-1].body
    assert sent == body.replace(b"\r\n\r\nasr-small\r\n", b"\r\n\r\nQwen/Qwen3-8B\r\n")


def test_a_request_at_max_concurrency_waits_for_a_slot_that_frees_at_once(
    start_agent: StartAgent, fake_hub: FakeHub, vllm: FakeVllm
) -> None:
    # The hub counts a request done when it has the last byte, the agent a moment later: a
    # request sent in between is served once the slot frees, not refused.
    vllm.chunks, vllm.chunk_delay = 3, 0.05
    agent = start_agent(vllm_service(vllm, max_concurrency=1))
    registered(agent, fake_hub)
    ending = open_chat_stream(fake_hub, agent.url, "vllm-qwen")
    resp = ending.getresponse()
    resp.readline()  # the stream is under way, nearly over
    status, _, body = signed(
        fake_hub,
        agent.callback_url,
        "POST",
        "/chat/completions",
        {"model": "Qwen/Qwen3-8B", "messages": []},
        service="vllm-qwen",
    )
    assert status == 200, body
    resp.read()
    ending.close()
