"""Every service type through the hub with the openai SDK (the hub in-process, the agent side
a fake)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest
from tornado.ioloop import IOLoop

from tests.support.fakes.agent import FakeAgent
from tests.support.hubapp import HubApp, running_hub

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
def every_type_key(hub_app: HubApp, fake_agent: FakeAgent, io_loop: IOLoop) -> str:
    """Alice's key; her agent `rig` serves a service of every type."""

    async def register() -> str:
        key = await hub_app.user_with_key("alice")
        assert (await hub_app.heartbeat(key, "rig", fake_agent.url, services()))[0] == 200
        return key

    return io_loop.run_sync(register)


@pytest.fixture
def every_type_sdk(hub_app: HubApp, every_type_key: str) -> openai.AsyncOpenAI:
    return hub_app.client(every_type_key)


async def test_models_show_each_type_once(every_type_sdk: openai.AsyncOpenAI) -> None:
    listed = sorted(
        (m.id, m.model_extra["type"]) for m in (await every_type_sdk.models.list()).data
    )
    assert listed == [
        ("m1", "embedding"),
        ("m1", "llm"),
        ("sd", "image"),
        ("shared", "llm"),
        ("shared", "stt"),
        ("tts-1", "tts"),
        ("whisper-1", "stt"),
    ]


async def test_transcription_forwards_the_upload_byte_for_byte(
    every_type_sdk: openai.AsyncOpenAI, fake_agent: FakeAgent
) -> None:
    result = await every_type_sdk.audio.transcriptions.create(
        model="whisper-1",
        file=("clip.wav", AUDIO, "audio/wav"),
        language="en",
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    assert result.text == "the quick brown fox"
    assert [w.word for w in result.words or []] == ["the", "quick", "brown", "fox"]
    assert result.segments and result.segments[0].end == 2.0
    fields, files = fake_agent.form()
    assert files["file"][0].body == AUDIO and files["file"][0].filename == "clip.wav"
    assert fields["timestamp_granularities[]"] == ["word", "segment"]
    assert fields["language"] == ["en"] and fields["model"] == ["whisper-1"]
    assert fake_agent.requests[-1].headers["X-Inferclub-Service"] == "ears"


async def test_same_model_name_is_routed_by_type(
    every_type_sdk: openai.AsyncOpenAI, fake_agent: FakeAgent
) -> None:
    await every_type_sdk.chat.completions.create(model="shared", messages=[])
    assert fake_agent.requests[-1].headers["X-Inferclub-Service"] == "chat"
    await every_type_sdk.audio.transcriptions.create(model="shared", file=("a.wav", AUDIO))
    assert fake_agent.requests[-1].headers["X-Inferclub-Service"] == "ears"
    with pytest.raises(openai.NotFoundError) as exc:
        await every_type_sdk.audio.speech.create(model="whisper-1", voice="alloy", input="x")
    assert "served as stt, not tts" in exc.value.message


async def test_verbose_json_is_downgraded_without_timestamps(
    tmp_path: Path, fake_agent: FakeAgent
) -> None:
    async with running_hub(tmp_path) as hub:
        key = await hub.user_with_key("alice")
        await hub.heartbeat(key, "rig", fake_agent.url, services(timestamps=False))
        fake_agent.text_as_json = True  # like vLLM, which answers `text` with JSON
        raw = await hub.client(key).audio.transcriptions.with_raw_response.create(
            model="whisper-1",
            file=("a.wav", AUDIO),
            response_format="verbose_json",
            timestamp_granularities=["word"],
        )
        assert raw.headers["x-inferclub-downgraded"] == "verbose_json->text"
        assert raw.headers["content-type"].startswith("text/plain")
        assert raw.text == "the quick brown fox"
        fields, files = fake_agent.form()
        assert fields["response_format"] == ["text"] and "timestamp_granularities[]" not in fields
        assert files["file"][0].body == AUDIO


async def test_text_format_is_text_even_when_the_engine_sends_json(
    every_type_sdk: openai.AsyncOpenAI, fake_agent: FakeAgent
) -> None:
    fake_agent.text_as_json = True
    assert (
        await every_type_sdk.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", AUDIO), response_format="text"
        )
        == "the quick brown fox"
    )
    with pytest.warns(DeprecationWarning):  # the SDK marks translations as deprecated
        out = await every_type_sdk.audio.translations.create(
            model="whisper-1", file=("a.wav", AUDIO)
        )
    assert out.text == "the quick brown fox"
    assert fake_agent.requests[-1].path == "/v1/audio/translations"


async def test_stt_history_records_audio_seconds(
    hub_app: HubApp, every_type_sdk: openai.AsyncOpenAI
) -> None:
    await every_type_sdk.audio.transcriptions.create(model="whisper-1", file=("a.wav", AUDIO))
    row = (await hub_app.wait_for_request_rows(1))[-1]
    assert (row["type"], row["endpoint"], row["audio_seconds"]) == (
        "stt",
        "/v1/audio/transcriptions",
        3.0,
    )
    assert row["bytes_in"] > len(AUDIO)


async def test_speech_streams_audio_bytes(
    every_type_sdk: openai.AsyncOpenAI, fake_agent: FakeAgent
) -> None:
    fake_agent.chunk_delay, fake_agent.audio_chunks = 0.3, 5
    async with every_type_sdk.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input="hello", response_format="wav"
    ) as resp:
        assert resp.headers["content-type"] == "audio/wav"
        parts = []
        early = 0
        async for part in resp.iter_bytes():
            parts.append(part)
            early += fake_agent.completed_streams == 0
    assert b"".join(parts) == fake_agent.audio
    assert early >= 2, "audio was buffered until the engine finished"


async def test_speech_sse_is_passed_through(every_type_sdk: openai.AsyncOpenAI) -> None:
    async with every_type_sdk.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input="hello", stream_format="sse"
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [
            json.loads(line[6:]) async for line in resp.iter_lines() if line.startswith("data: ")
        ]
    assert [e["type"] for e in events] == ["speech.audio.delta", "speech.audio.done"]


async def test_images_generations_and_edits(
    hub_app: HubApp, every_type_sdk: openai.AsyncOpenAI, fake_agent: FakeAgent
) -> None:
    generated = await every_type_sdk.images.generate(
        model="sd", prompt="a fox", n=2, response_format="b64_json"
    )
    assert generated.data[0].b64_json
    assert (
        (await every_type_sdk.images.generate(model="sd", prompt="a fox", response_format="url"))
        .data[0]
        .url
    )
    png = b"\x89PNG\r\n\x1a\n" + bytes(200)
    edited = await every_type_sdk.images.edit(
        model="sd",
        prompt="hat",
        image=[("a.png", png), ("b.png", png[::-1])],
        mask=("m.png", png),
        n=3,
    )
    assert len(edited.data) == 3
    _, files = fake_agent.form()
    assert [f.body for f in files["image[]"]] == [png, png[::-1]] and files["mask"][0].body == png
    rows = await hub_app.wait_for_request_rows(3)
    assert [r["images"] for r in rows] == [2, 1, 3]


async def test_an_edit_takes_sixteen_images_and_one_mask(
    every_type_sdk: openai.AsyncOpenAI, fake_agent: FakeAgent
) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(64)
    images = [(f"{i}.png", png) for i in range(16)]
    edited = await every_type_sdk.images.edit(
        model="sd", prompt="hat", image=images, mask=("m.png", png)
    )
    assert edited.data
    _, files = fake_agent.form()
    assert len(files["image[]"]) == 16 and len(files["mask"]) == 1
    sent = len(fake_agent.requests)

    with pytest.raises(openai.BadRequestError) as too_many:
        await every_type_sdk.images.edit(model="sd", prompt="hat", image=[*images, ("x.png", png)])
    assert too_many.value.param == "image" and "16 images" in too_many.value.message
    assert len(fake_agent.requests) == sent, "a refused edit never reaches the agent"


async def test_embeddings(hub_app: HubApp, every_type_sdk: openai.AsyncOpenAI) -> None:
    out = await every_type_sdk.embeddings.create(
        model="m1", input=["a", "b"], encoding_format="float"
    )
    assert len(out.data) == 2
    row = (await hub_app.wait_for_request_rows(1))[-1]
    assert (row["type"], row["prompt_tokens"]) == ("embedding", 2)


async def test_malformed_uploads_are_400(
    hub_app: HubApp, every_type_key: str, fake_agent: FakeAgent
) -> None:
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
        status, err = await hub_app.post_json(
            "/v1/audio/transcriptions", body, every_type_key, ctype
        )
        assert status == 400 and message in err["error"]["message"], err
    status, err = await hub_app.post_json(
        "/v1/images/edits", only_model.replace(b"whisper-1", b"sd"), every_type_key, form
    )
    assert status == 400 and err["error"]["param"] == "image"
    assert not [r for r in fake_agent.requests if r.method == "POST"]


async def test_oversize_uploads_are_413_and_never_forwarded(
    tmp_path: Path, fake_agent: FakeAgent
) -> None:
    async with running_hub(tmp_path, max_audio_body=5000, max_image_body=3000) as hub:
        key = await hub.user_with_key("alice")
        await hub.heartbeat(key, "rig", fake_agent.url, services())
        c = hub.client(key)
        with pytest.raises(openai.APIStatusError) as exc:
            await c.audio.transcriptions.create(model="whisper-1", file=("a.wav", bytes(6000)))
        assert exc.value.status_code == 413
        with pytest.raises(openai.APIStatusError) as exc:
            await c.images.edit(
                model="sd", prompt="x", image=[("a.png", bytes(1000)), ("b.png", bytes(3500))]
            )
        assert exc.value.status_code == 413 and "b.png" in exc.value.message
        assert not [r for r in fake_agent.requests if r.method == "POST"]
        # Within the limits, both work.
        assert (
            await c.audio.transcriptions.create(model="whisper-1", file=("a.wav", bytes(3000)))
        ).text
        assert (await c.images.edit(model="sd", prompt="x", image=("a.png", bytes(2000)))).data
