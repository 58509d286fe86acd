"""Every service type through hub and agent, against fakes of the engines that cannot run here:
vLLM (chat, a Qwen3-ASR-like stt service without timestamps, a Whisper-like one with them,
embeddings), whisper.cpp, speaches (speech), stable-diffusion.cpp and LocalAI (images).
"""

from __future__ import annotations

import base64
import itertools
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from tornado.httputil import HTTPFile, parse_body_arguments

from tests.e2e.conftest import Stack, start_stack
from tests.support.fakes import (
    FakeLocalAIImages,
    FakeSdCpp,
    FakeServer,
    FakeSpeaches,
    FakeVllm,
    FakeWhisperCpp,
)
from tests.support.fakes.base import Recorded
from tests.support.fakes.images import png

QWEN = "Qwen/Qwen3-8B"
ASR = "Qwen/Qwen3-ASR-1.7B"
WHISPER = "openai/whisper-large-v3"
KOKORO = "speaches-ai/Kokoro-82M-v1.0-ONNX"
AUDIO_LIMIT = 200_000
IMAGE_LIMIT = 50_000


def wav(seconds: float = 2.0, rate: int = 16000) -> bytes:
    """A silent 16-bit mono WAV (the fakes read its length from the header)."""
    data = bytes(int(seconds * rate) * 2)
    header = (
        b"RIFF"
        + (36 + len(data)).to_bytes(4, "little")
        + b"WAVEfmt "
        + (16).to_bytes(4, "little")
        + (1).to_bytes(2, "little")
        + (1).to_bytes(2, "little")
        + rate.to_bytes(4, "little")
        + (rate * 2).to_bytes(4, "little")
        + (2).to_bytes(2, "little")
        + (16).to_bytes(2, "little")
        + b"data"
        + len(data).to_bytes(4, "little")
    )
    return header + data


AUDIO = wav()


class Fakes:
    def __init__(self) -> None:
        self.chat = FakeVllm([QWEN])
        self.asr = FakeVllm([ASR])  # Qwen3-ASR: no timestamps, verbose_json is a 400
        self.asr.transcript = "Qwen hears you loud and clear."
        self.whisper = FakeVllm([WHISPER], timestamps=True)
        self.vectors = FakeVllm(["intfloat/e5-small"])
        self.wcpp = FakeWhisperCpp()
        self.speaches = FakeSpeaches()
        self.sd = FakeSdCpp()
        self.localai = FakeLocalAIImages()

    def all(self) -> list[FakeServer]:
        return [
            self.chat,
            self.asr,
            self.whisper,
            self.vectors,
            self.wcpp,
            self.speaches,
            self.sd,
            self.localai,
        ]


@pytest.fixture(scope="module")
def fakes() -> Iterator[Fakes]:
    f = Fakes()
    for fake in f.all():
        fake.start()
    yield f
    for fake in f.all():
        fake.close()


@pytest.fixture(scope="module")
def stack(fakes: Fakes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    services: list[dict[str, Any]] = [
        {
            "name": "chat",
            "engine": "vllm",
            "url": fakes.chat.url,
            "models": [{"id": QWEN}, {"id": QWEN, "alias": "shared"}],
        },
        {
            "name": "asr",
            "type": "stt",
            "engine": "vllm",
            "url": fakes.asr.url,
            "models": [{"id": ASR}, {"id": ASR, "alias": "shared"}],
        },
        {
            "name": "vllm-whisper",
            "type": "stt",
            "engine": "vllm",
            "url": fakes.whisper.url,
            "features": ["timestamps"],
        },
        {"name": "vectors", "type": "embedding", "engine": "vllm", "url": fakes.vectors.url},
        {
            "name": "wcpp",
            "type": "stt",
            "engine": "whisper",
            "url": fakes.wcpp.url,
            "options": {"api": "whispercpp"},
            "features": ["timestamps"],
            "models": ["whisper-1"],
        },
        {
            "name": "kokoro",
            "type": "tts",
            "engine": "openai",
            "url": fakes.speaches.url,
            "models": [{"id": KOKORO, "alias": "kokoro"}],
        },
        {"name": "sd", "type": "image", "engine": "openai", "url": fakes.sd.url},
        {"name": "localai", "type": "image", "engine": "openai", "url": fakes.localai.url},
    ]
    expected = {
        (QWEN, "llm"),
        ("shared", "llm"),
        (ASR, "stt"),
        ("shared", "stt"),
        (WHISPER, "stt"),
        ("intfloat/e5-small", "embedding"),
        ("whisper-1", "stt"),
        ("kokoro", "tts"),
        ("sd-cpp-local", "image"),
        ("stablediffusion", "image"),
    }
    env = {
        "INFERCLUB_MAX_AUDIO_BODY": str(AUDIO_LIMIT),
        "INFERCLUB_MAX_IMAGE_BODY": str(IMAGE_LIMIT),
    }
    with start_stack(tmp_path_factory.mktemp("modalities"), services, expected, env) as s:
        yield s


@pytest.fixture
def sdk(stack: Stack) -> Iterator[openai.OpenAI]:
    with stack.client() as client:
        yield client


def form(rec: Recorded) -> tuple[dict[str, list[str]], dict[str, list[HTTPFile]]]:
    """Fields and files of a multipart request an engine received."""
    fields: dict[str, list[bytes]] = {}
    files: dict[str, list[HTTPFile]] = {}
    parse_body_arguments(rec.headers["Content-Type"], rec.body, fields, files)
    return {k: [v.decode() for v in vs] for k, vs in fields.items()}, files


def request_id(raw: Any) -> str:
    return str(raw.headers["x-request-id"])


# -- routing by type ---------------------------------------------------------------------------


def test_one_model_name_as_llm_and_stt_goes_to_the_right_service(
    stack: Stack, sdk: openai.OpenAI, fakes: Fakes
) -> None:
    chats, asrs = len(fakes.chat.posts("/v1/chat/completions")), len(_posts(fakes.asr))
    reply = sdk.chat.completions.with_raw_response.create(
        model="shared", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.parse().choices[0].message.content
    sent = fakes.chat.posts("/v1/chat/completions")
    assert len(sent) == chats + 1 and sent[-1].json()["model"] == QWEN
    assert len(_posts(fakes.asr)) == asrs  # the stt service never saw the chat

    text = sdk.audio.transcriptions.create(model="shared", file=("a.wav", AUDIO))
    assert text.text == fakes.asr.transcript
    fields, files = form(fakes.asr.posts("/v1/audio/transcriptions")[-1])
    assert fields["model"] == [ASR] and files["file"][0].body == AUDIO
    assert len(fakes.chat.posts("/v1/chat/completions")) == chats + 1

    row = stack.row(request_id(reply))
    assert (row["type"], row["service"], row["model"]) == ("llm", "chat", "shared")
    with pytest.raises(openai.NotFoundError) as info:
        sdk.audio.speech.create(model="shared", voice="alloy", input="x")
    assert "not tts" in info.value.message


# -- transcription: vLLM -----------------------------------------------------------------------


def test_verbose_json_is_downgraded_for_vllm_without_timestamps(
    stack: Stack, sdk: openai.OpenAI, fakes: Fakes
) -> None:
    # The fake is Qwen3-ASR-like: asked for verbose_json directly, it refuses.
    direct = urllib.request.Request(
        fakes.asr.url + "/audio/transcriptions",
        method="POST",
        data=(
            b'--b\r\nContent-Disposition: form-data; name="response_format"\r\n\r\nverbose_json'
            b'\r\n--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
            + AUDIO
            + b"\r\n--b--\r\n"
        ),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(direct, timeout=10)
    assert refused.value.code == 400
    refused.value.close()

    raw = sdk.audio.transcriptions.with_raw_response.create(
        model=ASR,
        file=("a.wav", AUDIO),
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    assert raw.headers["x-inferclub-downgraded"] == "verbose_json->text"
    assert raw.headers["content-type"].startswith("text/plain")
    assert raw.text == fakes.asr.transcript
    assert raw.parse() == fakes.asr.transcript  # the SDK hands back the text as a str
    fields, files = form(fakes.asr.posts("/v1/audio/transcriptions")[-1])
    assert fields["response_format"] == ["text"] and "timestamp_granularities[]" not in fields
    assert files["file"][0].body == AUDIO
    row = stack.row(request_id(raw))
    assert (row["status"], row["type"], row["service"]) == (200, "stt", "asr")


def test_vllm_text_comes_back_as_plain_text(sdk: openai.OpenAI, fakes: Fakes) -> None:
    raw = sdk.audio.transcriptions.with_raw_response.create(
        model=ASR, file=("a.wav", AUDIO), response_format="text"
    )
    # vLLM answers `text` with JSON {"text", "usage"}; OpenAI answers plain text.
    assert raw.headers["content-type"] == "text/plain; charset=utf-8"
    assert raw.text == raw.parse() == fakes.asr.transcript
    assert "x-inferclub-downgraded" not in raw.headers


def test_vllm_json_records_audio_seconds(stack: Stack, sdk: openai.OpenAI, fakes: Fakes) -> None:
    raw = sdk.audio.transcriptions.with_raw_response.create(model=ASR, file=("a.wav", AUDIO))
    result = raw.parse()
    assert result.text == fakes.asr.transcript
    assert result.usage is not None and result.usage.type == "duration"
    row = stack.row(request_id(raw))
    assert (row["type"], row["audio_seconds"]) == ("stt", 2.0)


def test_verbose_json_passes_through_to_a_timestamps_service(
    stack: Stack, sdk: openai.OpenAI, fakes: Fakes
) -> None:
    raw = sdk.audio.transcriptions.with_raw_response.create(
        model=WHISPER,
        file=("a.wav", wav(3.5)),
        response_format="verbose_json",
        language="en",
        timestamp_granularities=["segment"],
    )
    assert "x-inferclub-downgraded" not in raw.headers
    assert json.loads(raw.text)["duration"] == 3.5  # vLLM sent "3.5", a string
    result = raw.parse()
    assert result.text == fakes.whisper.transcript and result.language == "en"
    assert result.segments and result.segments[0].end == 3.5
    assert result.words is None  # vLLM never fills words
    fields, _ = form(fakes.whisper.posts("/v1/audio/transcriptions")[-1])
    assert fields["response_format"] == ["verbose_json"]
    assert fields["timestamp_granularities[]"] == ["segment"]
    row = stack.row(request_id(raw))
    assert (row["type"], row["service"], row["audio_seconds"]) == ("stt", "vllm-whisper", 3.5)


def test_vllm_transcription_stream_becomes_openai_events(sdk: openai.OpenAI, fakes: Fakes) -> None:
    stream = sdk.audio.transcriptions.create(model=ASR, file=("a.wav", AUDIO), stream=True)
    events = list(stream)
    assert [e.type for e in events] == ["transcript.text.delta"] * 6 + ["transcript.text.done"]
    # Qwen3-ASR's `language English<asr_text>` header is gone from the deltas, as from `json`.
    deltas = "".join(e.delta for e in events if e.type == "transcript.text.delta")
    assert deltas == fakes.asr.transcript
    assert events[-1].type == "transcript.text.done" and events[-1].text == deltas


def test_vllm_translation_text(sdk: openai.OpenAI, fakes: Fakes) -> None:
    with pytest.warns(DeprecationWarning):  # the SDK marks translations as deprecated
        out = sdk.audio.translations.create(
            model=ASR, file=("a.wav", AUDIO), response_format="text"
        )
    assert out == fakes.asr.transcript
    assert fakes.asr.posts("/v1/audio/translations")


# -- transcription: whisper.cpp ----------------------------------------------------------------


def test_whisper_cpp_verbose_json_with_segments_and_words(
    stack: Stack, sdk: openai.OpenAI, fakes: Fakes
) -> None:
    raw = sdk.audio.transcriptions.with_raw_response.create(
        model="whisper-1",
        file=("a.wav", AUDIO),
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    result = raw.parse()
    assert result.text == fakes.wcpp.text and result.language == "english"
    assert [s.text for s in result.segments or []] == [
        " And so my fellow Americans,",
        " ask not what your country can do for you.",
    ]
    words = result.words or []
    # whisper.cpp's tokens (" Amer", "icans", ",") joined into OpenAI's words.
    assert [w.word for w in words] == [
        "And",
        "so",
        "my",
        "fellow",
        "Americans",
        "ask",
        "not",
        "what",
        "your",
        "country",
        "can",
        "do",
        "for",
        "you",
    ]
    assert words[4].start == 1.0 and words[4].end == 1.45
    assert all(a.start <= b.start for a, b in itertools.pairwise(words))
    sent = fakes.wcpp.posts("/inference")[-1]
    fields, files = form(sent)
    assert fields["timestamp_granularities[]"] == ["word", "segment"]
    assert files["file"][0].body == AUDIO
    row = stack.row(request_id(raw))
    assert (row["type"], row["service"], row["audio_seconds"]) == ("stt", "wcpp", result.duration)

    plain = sdk.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", AUDIO), response_format="verbose_json"
    )
    assert plain.words is None and plain.segments  # no word granularity asked, none added


def test_whisper_cpp_json_text_srt_and_translation(sdk: openai.OpenAI, fakes: Fakes) -> None:
    assert (
        sdk.audio.transcriptions.create(model="whisper-1", file=("a.wav", AUDIO)).text
        == fakes.wcpp.text
    )
    raw = sdk.audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=("a.wav", AUDIO), response_format="text"
    )
    assert raw.headers["content-type"] == "text/plain; charset=utf-8"  # whisper.cpp: text/html
    assert raw.parse() == fakes.wcpp.text
    srt = sdk.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", AUDIO), response_format="srt"
    )
    assert srt.startswith("1\n00:00:00,000 --> ")
    with pytest.warns(DeprecationWarning):
        out = sdk.audio.translations.create(model="whisper-1", file=("a.wav", AUDIO))
    assert out.text.startswith(" [translated]")
    fields, _ = form(fakes.wcpp.posts("/inference")[-1])
    assert fields["translate"] == ["true"]


# -- speech ------------------------------------------------------------------------------------


def test_speech_audio_streams_as_it_arrives(stack: Stack, sdk: openai.OpenAI, fakes: Fakes) -> None:
    fakes.speaches.chunk_delay = 0.3
    done_before = fakes.speaches.completed_streams
    try:
        with sdk.audio.speech.with_streaming_response.create(
            model="kokoro", voice="alloy", input="hello", response_format="wav"
        ) as resp:
            assert resp.headers["content-type"] == "audio/wav"
            parts, early = [], 0
            for part in resp.iter_bytes():
                parts.append(part)
                early += fakes.speaches.completed_streams == done_before
            rid = resp.headers["x-request-id"]
    finally:
        fakes.speaches.chunk_delay = 0.0
    assert b"".join(parts) == fakes.speaches.audio
    assert early >= 2, "the audio was held back until the engine finished"
    assert fakes.speaches.posts("/v1/audio/speech")[-1].json()["model"] == KOKORO
    row = stack.row(rid)
    assert (row["type"], row["status"], row["bytes_out"]) == ("tts", 200, len(fakes.speaches.audio))


def test_speech_sse_is_passed_through(stack: Stack, sdk: openai.OpenAI, fakes: Fakes) -> None:
    with sdk.audio.speech.with_streaming_response.create(
        model="kokoro", voice="alloy", input="hello", stream_format="sse"
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: ")]
        rid = resp.headers["x-request-id"]
    assert [e["type"] for e in events] == ["speech.audio.delta"] * 4 + ["speech.audio.done"]
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert audio == fakes.speaches.audio
    # speaches calls it token_usage; OpenAI clients read `usage`.
    assert events[-1]["usage"] == {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    assert "token_usage" not in events[-1]
    assert stack.row(rid)["type"] == "tts"


# -- images ------------------------------------------------------------------------------------


def test_image_generation_b64_json(stack: Stack, sdk: openai.OpenAI, fakes: Fakes) -> None:
    raw = sdk.images.with_raw_response.generate(
        model="sd-cpp-local", prompt="a fox", n=2, size="256x256", response_format="b64_json"
    )
    result = raw.parse()
    assert [base64.b64decode(d.b64_json or "")[:8] for d in result.data or []] == [
        b"\x89PNG\r\n\x1a\n"
    ] * 2
    assert result.output_format == "png"
    sent = fakes.sd.posts("/v1/images/generations")[-1].json()
    assert sent["model"] == "sd-cpp-local" and sent["n"] == 2
    row = stack.row(request_id(raw))
    assert (row["type"], row["images"], row["service"]) == ("image", 2, "sd")
    # sd.cpp always answers b64_json, also when a url was asked for (as gpt-image models do).
    as_url = sdk.images.generate(model="sd-cpp-local", prompt="a fox", response_format="url")
    assert as_url.data and as_url.data[0].b64_json and as_url.data[0].url is None


def test_image_generation_url(stack: Stack, sdk: openai.OpenAI, fakes: Fakes) -> None:
    raw = sdk.images.with_raw_response.generate(
        model="stablediffusion", prompt="a fox", response_format="url"
    )
    data = raw.parse().data or []
    assert len(data) == 1 and data[0].url and data[0].b64_json is None
    with urllib.request.urlopen(data[0].url, timeout=10) as image:
        assert image.read()[:8] == b"\x89PNG\r\n\x1a\n"
    row = stack.row(request_id(raw))
    assert (row["type"], row["images"], row["service"]) == ("image", 1, "localai")


def test_image_edits_with_image_image_list_and_mask(
    stack: Stack, sdk: openai.OpenAI, fakes: Fakes
) -> None:
    first, second, mask = png(4, 4, (1, 2, 3)), png(6, 6, (4, 5, 6)), png(4, 4, (0, 0, 0))

    single = sdk.images.with_raw_response.edit(
        model="sd-cpp-local", prompt="add a hat", image=("a.png", first, "image/png")
    )
    assert len(single.parse().data or []) == 1
    _, files = form(fakes.sd.posts("/v1/images/edits")[-1])
    assert [f.body for f in files["image"]] == [first] and "mask" not in files

    several = sdk.images.with_raw_response.edit(
        model="sd-cpp-local",
        prompt="add a hat",
        n=3,
        mask=("m.png", mask, "image/png"),
        image=[("a.png", first, "image/png"), ("b.png", second, "image/png")],
    )
    assert len(several.parse().data or []) == 3
    fields, files = form(fakes.sd.posts("/v1/images/edits")[-1])
    assert [f.body for f in files["image[]"]] == [first, second]
    assert [f.body for f in files["mask"]] == [mask]
    assert fields["prompt"] == ["add a hat"] and fields["n"] == ["3"]
    assert [stack.row(request_id(r))["images"] for r in (single, several)] == [1, 3]


# -- embeddings --------------------------------------------------------------------------------


def test_embeddings(stack: Stack, sdk: openai.OpenAI, fakes: Fakes) -> None:
    raw = sdk.embeddings.with_raw_response.create(
        model="intfloat/e5-small", input=["a", "b"], encoding_format="float"
    )
    assert [d.embedding for d in raw.parse().data] == [[0.1, 0.2, 0.3]] * 2
    assert fakes.vectors.posts("/v1/embeddings")[-1].json()["input"] == ["a", "b"]
    row = stack.row(request_id(raw))
    assert (row["type"], row["prompt_tokens"], row["service"]) == ("embedding", 2, "vectors")


# -- uploads the hub refuses -------------------------------------------------------------------


def test_oversize_and_malformed_uploads_never_reach_an_engine(
    stack: Stack, sdk: openai.OpenAI, fakes: Fakes
) -> None:
    # Count inference posts only: the agent's health probes (GET) may run meanwhile.
    seen = [len(_posts(f)) for f in fakes.all()]
    with pytest.raises(openai.APIStatusError) as big_audio:
        sdk.audio.transcriptions.create(model="whisper-1", file=("a.wav", bytes(AUDIO_LIMIT + 1)))
    assert big_audio.value.status_code == 413
    assert big_audio.value.code == "request_too_large"
    with pytest.raises(openai.APIStatusError) as big_image:
        sdk.images.edit(
            model="sd-cpp-local",
            prompt="x",
            image=[("a.png", png()), ("b.png", bytes(IMAGE_LIMIT + 1))],
        )
    assert big_image.value.status_code == 413 and "b.png" in big_image.value.message

    form_type = "multipart/form-data; boundary=XX"
    model_only = b'--XX\r\nContent-Disposition: form-data; name="model"\r\n\r\n%s\r\n--XX--\r\n'
    cases = [
        ("/v1/audio/transcriptions", b"--XX\r\nbroken", form_type, None),
        ("/v1/audio/transcriptions", model_only % b"whisper-1", form_type, "missing_file"),
        ("/v1/audio/translations", b'{"model": "whisper-1"}', "application/json", None),
        ("/v1/images/edits", model_only % b"sd-cpp-local", form_type, "missing_file"),
    ]
    for path, body, ctype, code in cases:
        status, err = stack.hub.post_json(path, body, stack.key, ctype)
        assert status == 400, (path, err)
        assert code is None or err["error"]["code"] == code
    assert [len(_posts(f)) for f in fakes.all()] == seen, "an engine was contacted"


def _posts(fake: FakeServer) -> list[Recorded]:
    return [r for r in fake.requests if r.method == "POST"]
