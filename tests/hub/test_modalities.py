"""Every service type through the hub with the openai SDK (the agent side is a fake)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.fakes.agent import FakeAgent
from tests.support.hubproc import HubProcess, start_hub

AUDIO = bytes(range(256)) * 64 + b"\r\n--not-a-boundary\r\n" + bytes(range(255, -1, -1))


def services(timestamps: bool = True) -> list[dict[str, Any]]:
    return [
        {"name": "chat", "type": "llm", "engine": "vllm", "models": ["m1", "shared"]},
        {
            "name": "ears",
            "type": "stt",
            "engine": "whisper",
            "features": ["timestamps"] if timestamps else [],
            "models": ["whisper-1", "shared"],
        },
        {"name": "voice", "type": "tts", "engine": "openai", "models": ["tts-1"]},
        {"name": "paint", "type": "image", "engine": "openai", "models": ["sd"]},
        {"name": "vectors", "type": "embedding", "engine": "openai", "models": ["m1"]},
    ]


@pytest.fixture
def agent() -> Iterator[FakeAgent]:
    with FakeAgent(["m1", "shared"]) as a:
        yield a


@pytest.fixture
def key(hub: HubProcess, agent: FakeAgent) -> str:
    k = hub.user_with_key("alice")
    assert hub.heartbeat(k, "rig", agent.url, services())[0] == 200
    return k


@pytest.fixture
def c(hub: HubProcess, key: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=hub.api_base, api_key=key, max_retries=0) as client:
        yield client


def test_models_show_each_type_once(c: openai.OpenAI) -> None:
    listed = sorted((m.id, m.model_extra["type"]) for m in c.models.list().data)
    assert listed == [
        ("m1", "embedding"),
        ("m1", "llm"),
        ("sd", "image"),
        ("shared", "llm"),
        ("shared", "stt"),
        ("tts-1", "tts"),
        ("whisper-1", "stt"),
    ]


def test_transcription_forwards_the_upload_byte_for_byte(
    c: openai.OpenAI, agent: FakeAgent
) -> None:
    result = c.audio.transcriptions.create(
        model="whisper-1",
        file=("clip.wav", AUDIO, "audio/wav"),
        language="en",
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    assert result.text == "the quick brown fox"
    assert [w.word for w in result.words or []] == ["the", "quick", "brown", "fox"]
    assert result.segments and result.segments[0].end == 2.0
    fields, files = agent.form()
    assert files["file"][0].body == AUDIO and files["file"][0].filename == "clip.wav"
    assert fields["timestamp_granularities[]"] == ["word", "segment"]
    assert fields["language"] == ["en"] and fields["model"] == ["whisper-1"]
    assert agent.requests[-1].headers["X-Inferclub-Service"] == "ears"


def test_same_model_name_is_routed_by_type(c: openai.OpenAI, agent: FakeAgent) -> None:
    c.chat.completions.create(model="shared", messages=[])
    assert agent.requests[-1].headers["X-Inferclub-Service"] == "chat"
    c.audio.transcriptions.create(model="shared", file=("a.wav", AUDIO))
    assert agent.requests[-1].headers["X-Inferclub-Service"] == "ears"
    with pytest.raises(openai.NotFoundError) as exc:
        c.audio.speech.create(model="whisper-1", voice="alloy", input="x")
    assert "served as stt, not tts" in exc.value.message


def test_verbose_json_is_downgraded_without_timestamps(tmp_path: Path, agent: FakeAgent) -> None:
    with start_hub(tmp_path) as hub:
        key = hub.user_with_key("alice")
        hub.heartbeat(key, "rig", agent.url, services(timestamps=False))
        agent.text_as_json = True  # like vLLM, which answers `text` with JSON
        with openai.OpenAI(base_url=hub.api_base, api_key=key, max_retries=0) as c:
            raw = c.audio.transcriptions.with_raw_response.create(
                model="whisper-1",
                file=("a.wav", AUDIO),
                response_format="verbose_json",
                timestamp_granularities=["word"],
            )
        assert raw.headers["x-inferclub-downgraded"] == "verbose_json->text"
        assert raw.headers["content-type"].startswith("text/plain")
        assert raw.text == "the quick brown fox"
        fields, files = agent.form()
        assert fields["response_format"] == ["text"] and "timestamp_granularities[]" not in fields
        assert files["file"][0].body == AUDIO


def test_text_format_is_text_even_when_the_engine_sends_json(
    c: openai.OpenAI, agent: FakeAgent
) -> None:
    agent.text_as_json = True
    assert (
        c.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", AUDIO), response_format="text"
        )
        == "the quick brown fox"
    )
    with pytest.warns(DeprecationWarning):  # the SDK marks translations as deprecated
        out = c.audio.translations.create(model="whisper-1", file=("a.wav", AUDIO))
    assert out.text == "the quick brown fox"
    assert agent.requests[-1].path == "/v1/audio/translations"


def test_stt_history_records_audio_seconds(hub: HubProcess, c: openai.OpenAI) -> None:
    c.audio.transcriptions.create(model="whisper-1", file=("a.wav", AUDIO))
    row = hub.wait_for_request_rows(1)[-1]
    assert (row["type"], row["endpoint"], row["audio_seconds"]) == (
        "stt",
        "/v1/audio/transcriptions",
        3.0,
    )
    assert row["bytes_in"] > len(AUDIO)


def test_speech_streams_audio_bytes(c: openai.OpenAI, agent: FakeAgent) -> None:
    agent.chunk_delay, agent.audio_chunks = 0.3, 5
    with c.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input="hello", response_format="wav"
    ) as resp:
        assert resp.headers["content-type"] == "audio/wav"
        parts = []
        early = 0
        for part in resp.iter_bytes():
            parts.append(part)
            early += agent.completed_streams == 0
    assert b"".join(parts) == agent.audio
    assert early >= 2, "audio was buffered until the engine finished"


def test_speech_sse_is_passed_through(c: openai.OpenAI) -> None:
    with c.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input="hello", stream_format="sse"
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: ")]
    assert [e["type"] for e in events] == ["speech.audio.delta", "speech.audio.done"]


def test_images_generations_and_edits(hub: HubProcess, c: openai.OpenAI, agent: FakeAgent) -> None:
    assert (
        c.images.generate(model="sd", prompt="a fox", n=2, response_format="b64_json")
        .data[0]
        .b64_json
    )
    assert c.images.generate(model="sd", prompt="a fox", response_format="url").data[0].url
    png = b"\x89PNG\r\n\x1a\n" + bytes(200)
    edited = c.images.edit(
        model="sd",
        prompt="hat",
        image=[("a.png", png), ("b.png", png[::-1])],
        mask=("m.png", png),
        n=3,
    )
    assert len(edited.data) == 3
    _, files = agent.form()
    assert [f.body for f in files["image[]"]] == [png, png[::-1]] and files["mask"][0].body == png
    rows = hub.wait_for_request_rows(3)
    assert [r["images"] for r in rows] == [2, 1, 3]


def test_embeddings(hub: HubProcess, c: openai.OpenAI) -> None:
    out = c.embeddings.create(model="m1", input=["a", "b"], encoding_format="float")
    assert len(out.data) == 2
    row = hub.wait_for_request_rows(1)[-1]
    assert (row["type"], row["prompt_tokens"]) == ("embedding", 2)


def test_malformed_uploads_are_400(hub: HubProcess, key: str, agent: FakeAgent) -> None:
    form = "multipart/form-data; boundary=XX"
    only_model = (
        b'--XX\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n--XX--\r\n'
    )
    cases = [
        (b"garbage", form, "Malformed multipart"),
        (only_model, form, "upload a file in `file`"),
        (b'{"model": "whisper-1"}', "application/json", "Expected a multipart/form-data"),
        (b"--XX\r\nbroken", form, "Malformed multipart"),
    ]
    for body, ctype, message in cases:
        status, err = hub.post_json("/v1/audio/transcriptions", body, key, ctype)
        assert status == 400 and message in err["error"]["message"], err
    status, err = hub.post_json(
        "/v1/images/edits", only_model.replace(b"whisper-1", b"sd"), key, form
    )
    assert status == 400 and err["error"]["param"] == "image"
    assert not [r for r in agent.requests if r.method == "POST"]


def test_oversize_uploads_are_413_and_never_forwarded(tmp_path: Path, agent: FakeAgent) -> None:
    env = {"INFERCLUB_MAX_AUDIO_BODY": "5000", "INFERCLUB_MAX_IMAGE_BODY": "3000"}
    with start_hub(tmp_path, env=env) as hub:
        key = hub.user_with_key("alice")
        hub.heartbeat(key, "rig", agent.url, services())
        with openai.OpenAI(base_url=hub.api_base, api_key=key, max_retries=0) as c:
            with pytest.raises(openai.APIStatusError) as exc:
                c.audio.transcriptions.create(model="whisper-1", file=("a.wav", bytes(6000)))
            assert exc.value.status_code == 413
            with pytest.raises(openai.APIStatusError) as exc:
                c.images.edit(
                    model="sd", prompt="x", image=[("a.png", bytes(1000)), ("b.png", bytes(3500))]
                )
            assert exc.value.status_code == 413 and "b.png" in exc.value.message
            assert not [r for r in agent.requests if r.method == "POST"]
            # Within the limits, both work.
            assert c.audio.transcriptions.create(
                model="whisper-1", file=("a.wav", bytes(3000))
            ).text
            assert c.images.edit(model="sd", prompt="x", image=("a.png", bytes(2000))).data
