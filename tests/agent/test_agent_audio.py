"""The speech normalisations of inferclub.engines.audio, on the shapes engines really send."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from inferclub.engines import EngineRequest, EngineResponse
from inferclub.engines.audio import (
    ChunksToTranscriptEvents,
    map_sse,
    normalise_transcript,
    rewrite_whole,
    stt_ask,
    usage_from_token_usage,
    words_from_segments,
)
from inferclub.multipart import get_fields

CTYPE = "multipart/form-data; boundary=b0"


def form(**fields: str | list[str]) -> bytes:
    out = b""
    for name, values in fields.items():
        for value in values if isinstance(values, list) else [values]:
            out += (
                f'--b0\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
            )
    out += b'--b0\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF\r\n'
    return out + b"--b0--\r\n"


async def feed(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def body_of(chunks: AsyncIterator[bytes]) -> bytes:
    async def collect() -> bytes:
        return b"".join([c async for c in chunks])

    return asyncio.run(collect())


def test_list_fields_are_all_read() -> None:
    body = form(**{"timestamp_granularities[]": ["word", "segment"], "model": "m"})
    assert get_fields(body, CTYPE, "timestamp_granularities[]") == ["word", "segment"]
    assert get_fields(body, CTYPE, "file") == []  # file parts are not fields
    assert get_fields(body, "application/json", "model") == []


def test_ask_reads_the_noted_format_first() -> None:
    body = form(response_format="json", stream="true", **{"timestamp_granularities[]": "word"})
    request = EngineRequest(
        "POST",
        "/audio/transcriptions",
        {"Content-Type": CTYPE},
        body,
        notes={"response_format": "text"},
    )
    ask = stt_ask(request)
    assert ask is not None and (ask.format, ask.words, ask.stream) == ("text", True, True)
    assert stt_ask(EngineRequest("POST", "/x", {"Content-Type": "application/json"}, b"{}")) is None


def test_whisper_cpp_tokens_become_openai_words() -> None:
    segments = [
        {
            "text": " And so my fellow Americans,",
            "words": [
                {"word": " And", "start": 0.0, "end": 0.3},
                {"word": " so", "start": 0.3, "end": 0.5},
                {"word": " Amer", "start": 0.5, "end": 0.8},
                {"word": "icans", "start": 0.8, "end": 1.2},
                {"word": ",", "start": 1.2, "end": 1.2},
                {"word": " -", "start": 1.2, "end": 1.3},
                {"word": " don't", "start": 1.3, "end": 1.6},
            ],
        },
        {
            "text": " ask.",
            "words": [
                {"word": " ask", "start": 2.0, "end": 2.4},
                {"word": ".", "start": 2.4, "end": 2.4},
            ],
        },
        {
            "text": "already words",
            "words": [
                {"word": "already", "start": 3, "end": 3.5},
                {"word": "words", "start": 3.5, "end": 4},
            ],
        },
    ]
    assert words_from_segments(segments) == [
        {"word": "And", "start": 0.0, "end": 0.3},
        {"word": "so", "start": 0.3, "end": 0.5},
        {"word": "Americans", "start": 0.5, "end": 1.2},
        {"word": "don't", "start": 1.3, "end": 1.6},
        {"word": "ask", "start": 2.0, "end": 2.4},
        {"word": "already", "start": 3, "end": 3.5},
        {"word": "words", "start": 3.5, "end": 4},
    ]


def normalise(fmt: str, ctype: str, payload: bytes, **fields: Any) -> tuple[str, bytes]:
    request = EngineRequest(
        "POST",
        "/audio/transcriptions",
        {"Content-Type": CTYPE},
        form(response_format=fmt, **fields),
    )
    out = normalise_transcript(
        EngineResponse(200, {"Content-Type": ctype}, feed(payload[:5], payload[5:])),
        stt_ask(request),
    )
    return out.headers["Content-Type"], body_of(out.chunks)


def test_vllm_text_and_verbose_json_are_fixed() -> None:
    vllm_text = json.dumps(
        {"text": "hi there", "usage": {"type": "duration", "seconds": 2}}
    ).encode()
    assert normalise("text", "application/json", vllm_text) == (
        "text/plain; charset=utf-8",
        b"hi there",
    )
    # json stays exactly what the engine sent.
    assert normalise("json", "application/json", vllm_text) == ("application/json", vllm_text)
    verbose = json.dumps(
        {"duration": "3.5", "language": None, "text": "hi", "segments": [], "words": None}
    ).encode()
    ctype, out = normalise("verbose_json", "application/json", verbose)
    assert ctype == "application/json"
    assert json.loads(out) == {
        "duration": 3.5,
        "language": None,
        "text": "hi",
        "segments": [],
        "words": None,
    }


def test_top_level_words_only_when_asked() -> None:
    verbose = json.dumps(
        {
            "duration": 1.0,
            "language": "english",
            "text": " hi",
            "segments": [{"text": " hi", "words": [{"word": " hi", "start": 0.1, "end": 0.4}]}],
        }
    ).encode()
    _, plain = normalise("verbose_json", "application/json", verbose)
    assert plain == verbose
    _, worded = normalise(
        "verbose_json",
        "application/json",
        verbose,
        **{"timestamp_granularities[]": ["segment", "word"]},
    )
    data = json.loads(worded)
    assert data["words"] == [{"word": "hi", "start": 0.1, "end": 0.4}]
    assert data["language"] == "english"


def test_whole_bodies_past_the_limit_pass_unchanged() -> None:
    big = [b"x" * 10, b"y" * 10, b"z" * 10]
    assert body_of(rewrite_whole(feed(*big), lambda b: b"rewritten", limit=15)) == b"".join(big)
    assert body_of(rewrite_whole(feed(*big), lambda b: b"rewritten", limit=100)) == b"rewritten"


def sse(*objs: Any) -> bytes:
    return b"".join(
        b"data: " + (o if isinstance(o, bytes) else json.dumps(o).encode()) + b"\n\n" for o in objs
    )


def events(raw: bytes) -> list[Any]:
    return [
        line[6:].decode() if line == b"data: [DONE]" else json.loads(line[6:])
        for line in raw.split(b"\n")
        if line.startswith(b"data: ")
    ]


def chunk(content: str) -> dict[str, Any]:
    return {"object": "transcription.chunk", "choices": [{"delta": {"content": content}}]}


def test_vllm_stream_becomes_transcript_events_split_anywhere() -> None:
    raw = sse(
        chunk("language English"),
        chunk("<asr_text>Hello"),
        chunk(" world"),
        {
            "object": "transcription.chunk",
            "choices": [],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        },
        b"[DONE]",
    ).replace(b"\n\n", b"\r\n\r\n")
    for size in (1, 7, len(raw)):
        parts = [raw[i : i + size] for i in range(0, len(raw), size)]
        out = events(body_of(map_sse(feed(*parts), ChunksToTranscriptEvents())))
        assert out == [
            {"type": "transcript.text.delta", "delta": "Hello", "logprobs": None},
            {"type": "transcript.text.delta", "delta": " world", "logprobs": None},
            {
                "type": "transcript.text.done",
                "text": "Hello world",
                "logprobs": None,
                "usage": {
                    "type": "tokens",
                    "input_tokens": 7,
                    "output_tokens": 3,
                    "total_tokens": 10,
                },
            },
            "[DONE]",
        ]


def test_plain_stream_and_errors_pass() -> None:
    raw = sse(chunk("lang"), chunk("uages are fun"), {"error": {"message": "boom"}}, b"[DONE]")
    out = events(body_of(map_sse(feed(raw), ChunksToTranscriptEvents())))
    assert out[0]["delta"] == "languages are fun"
    assert out[1] == {"error": {"message": "boom"}}
    assert out[2]["text"] == "languages are fun" and "usage" not in out[2]


def test_speaches_token_usage_is_named_usage() -> None:
    done = {
        "type": "speech.audio.done",
        "token_usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
    }
    delta = {"type": "speech.audio.delta", "audio": "AAAA"}
    out = events(body_of(map_sse(feed(sse(delta, done)), usage_from_token_usage)))
    assert out == [delta, {"type": "speech.audio.done", "usage": done["token_usage"]}]
