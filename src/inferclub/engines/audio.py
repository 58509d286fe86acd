"""Speech answers made to look like OpenAI's, whatever the engine sent.

OpenAI clients expect, per `response_format` of a transcription or translation: `json` ->
`{"text"}`; `text` (and `srt`, `vtt`) -> a plain-text body; `verbose_json` -> `{"language",
"duration": <number>, "text", "segments", "words"?}` with top-level `words` when word
timestamps were asked for. Engines differ (see the README, "Transcription formats and engine
quirks"): vLLM answers `text` with JSON and sends `duration` as a string, whisper.cpp puts
token-level words inside each segment, faster-whisper-server refuses `text`, vLLM streams
chat-style chunks instead of `transcript.text.*` events, speaches' speech events carry
`token_usage` instead of `usage`.

Whole JSON answers are rewritten only when the client asked for `text` or `verbose_json` (they
are small: a transcript); anything larger than `MAX_WHOLE_BODY` passes through unchanged.
Streams are rewritten event by event and never collected.
"""

from __future__ import annotations

import json
import string
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

from inferclub.engines.base import EngineRequest, EngineResponse
from inferclub.multipart import boundary_of, get_field, get_fields

#: Larger JSON transcripts are relayed as they are rather than held in memory.
MAX_WHOLE_BODY = 8 * 1024 * 1024
#: The note `prepare_request` leaves when it changed `response_format` (see `EngineRequest.notes`).
FORMAT_NOTE = "response_format"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
#: Characters stripped from the ends of a word (OpenAI's words carry no punctuation).
_WORD_EDGES = (
    string.whitespace + string.punctuation.replace("'", "") + "\u201c\u201d\u2018\u2019\u00bf\u00a1"
)


@dataclass(frozen=True)
class SttAsk:
    """What the client asked a speech-to-text service for."""

    #: `json` (OpenAI's default), `text`, `srt`, `vtt`, `verbose_json`, ...
    format: str
    #: `timestamp_granularities[]` includes `word`.
    words: bool
    stream: bool


def stt_ask(request: EngineRequest) -> SttAsk | None:
    """The client's wishes, from an upload (after `remember_format`); None if not multipart."""
    ctype = request.headers.get("Content-Type", "")
    if boundary_of(ctype) is None:
        return None
    fmt = request.notes.get(FORMAT_NOTE) or get_field(request.body, ctype, "response_format")
    granularities = get_fields(request.body, ctype, "timestamp_granularities[]")
    stream = (get_field(request.body, ctype, "stream") or "").strip().lower() == "true"
    return SttAsk((fmt or "json").strip(), "word" in granularities, stream)


def remember_format(request: EngineRequest) -> EngineRequest:
    """`request` with the client's `response_format` noted, before an engine changes it."""
    ctype = request.headers.get("Content-Type", "")
    if FORMAT_NOTE in request.notes or boundary_of(ctype) is None:
        return request
    fmt = get_field(request.body, ctype, "response_format") or "json"
    return replace(request, notes={**request.notes, FORMAT_NOTE: fmt.strip()})


def normalise_transcript(response: EngineResponse, ask: SttAsk | None) -> EngineResponse:
    """A whole transcription answer as OpenAI would send it for `ask.format`.

    - `text` answered with JSON `{"text": ...}` (vLLM, or a `json` answer the engine was asked
      for instead) becomes a `text/plain` body;
    - `text/html` (whisper.cpp's label for `text`) is relabelled `text/plain`;
    - `verbose_json`: a string `duration` becomes a number, and when word timestamps were
      asked for and there are no top-level `words`, they are built from the segments' own
      token-level `words` (whisper.cpp).

    Streams and other content types pass through unchanged.
    """
    if response.status >= 300:
        return response
    ctype = response.headers.get("Content-Type", "")
    if ctype.startswith("text/html"):  # no speech server means HTML; whisper.cpp means text
        return replace(response, headers={**response.headers, "Content-Type": TEXT_CONTENT_TYPE})
    if ask is None:
        return response
    is_json = ctype.startswith("application/json")
    if ask.format == "text" and is_json:
        return replace(
            response,
            headers={**response.headers, "Content-Type": TEXT_CONTENT_TYPE},
            chunks=rewrite_whole(response.chunks, _json_to_text),
        )
    if ask.format == "verbose_json" and is_json:
        return replace(response, chunks=rewrite_whole(response.chunks, lambda b: _verbose(b, ask)))
    return response


async def rewrite_whole(
    chunks: AsyncIterator[bytes], rewrite: Callable[[bytes], bytes], limit: int = MAX_WHOLE_BODY
) -> AsyncIterator[bytes]:
    """The body rewritten as a whole, or, past `limit` bytes, relayed unchanged as it comes."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            for part in parts:
                yield part
            async for rest in chunks:
                yield rest
            return
    yield rewrite(b"".join(parts))


def _json_to_text(body: bytes) -> bytes:
    try:
        data = json.loads(body)
    except ValueError:
        return body
    text = data.get("text") if isinstance(data, dict) else None
    return text.encode() if isinstance(text, str) else body


def _verbose(body: bytes, ask: SttAsk) -> bytes:
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if not isinstance(data, dict):
        return body
    changed = False
    duration = data.get("duration")
    if isinstance(duration, str):
        try:
            data["duration"] = float(duration)
            changed = True
        except ValueError:
            pass
    if ask.words and not data.get("words") and isinstance(data.get("segments"), list):
        words = words_from_segments(data["segments"])
        if words:
            data["words"] = words
            changed = True
    return json.dumps(data, ensure_ascii=False).encode() if changed else body


def words_from_segments(segments: list[Any]) -> list[dict[str, Any]]:
    """Top-level OpenAI `words` from per-segment `words` lists (whisper.cpp's verbose_json).

    whisper.cpp's words are tokens: " And", " Amer", "icans", ",". A token that does not start
    with a space continues the word before it (when the segment's tokens are of that kind);
    punctuation at a word's ends is dropped, as in OpenAI's words.
    """
    out: list[dict[str, Any]] = []
    for segment in segments:
        tokens = [
            t
            for t in (segment.get("words") if isinstance(segment, dict) else None) or []
            if isinstance(t, dict)
            and isinstance(t.get("word"), str)
            and isinstance(t.get("start"), (int, float))
            and isinstance(t.get("end"), (int, float))
        ]
        token_style = any(t["word"][:1].isspace() for t in tokens[1:])
        merged: list[dict[str, Any]] = []
        for token in tokens:
            text = token["word"]
            if token_style and merged and not text[:1].isspace():
                merged[-1]["word"] += text
                if text.strip(_WORD_EDGES):  # trailing punctuation does not lengthen a word
                    merged[-1]["end"] = token["end"]
            else:
                merged.append({"word": text, "start": token["start"], "end": token["end"]})
        for word in merged:
            word["word"] = word["word"].strip(_WORD_EDGES)
            if word["word"]:
                out.append(word)
    return out


# -- server-sent events --------------------------------------------------------------------------


async def map_sse(
    chunks: AsyncIterator[bytes], mapper: Callable[[bytes], bytes]
) -> AsyncIterator[bytes]:
    """Each complete SSE event (without its blank line) through `mapper`, as it arrives.

    `mapper` returns the events to send instead, each ending in a blank line (`b""` drops the
    event). Only a partial event is held back; what is left at the end passes unchanged.
    """
    pending = b""
    async for chunk in chunks:
        data = (pending + chunk).replace(b"\r\n", b"\n")
        events = data.split(b"\n\n")
        pending = events.pop()
        out = b"".join(mapper(event) for event in events if event)
        if out:
            yield out
    if pending:
        yield pending


def sse_data(event: bytes) -> bytes | None:
    """The `data:` payload of one event (lines joined), or None when it has none."""
    lines = [
        line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
    ]
    return b"\n".join(lines) if lines else None


def sse_event(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


class ChunksToTranscriptEvents:
    """vLLM's streamed transcription (chat-style `transcription.chunk` / `translation.chunk`
    events with `choices[0].delta.content`, a `choices: []` usage chunk, `[DONE]`) as OpenAI's
    `transcript.text.delta` events and a final `transcript.text.done` with the whole text.

    Qwen3-ASR's streamed deltas start with `language English<asr_text>`, which vLLM strips only
    from whole answers; the prefix is dropped here too. One instance per response.
    """

    PREFIX = "language "
    TAG = "<asr_text>"
    #: A prefix longer than this is text, not a header.
    MAX_PREFIX = 64

    def __init__(self) -> None:
        self.text: list[str] = []
        self.usage: dict[str, Any] | None = None
        self.head: str | None = ""  # deltas held back while they may still be the header

    def __call__(self, event: bytes) -> bytes:
        payload = sse_data(event)
        if payload is None:
            return event + b"\n\n"
        if payload.strip() == b"[DONE]":
            return self.done() + event + b"\n\n"
        try:
            obj = json.loads(payload)
        except ValueError:
            return event + b"\n\n"
        if not isinstance(obj, dict) or "error" in obj or not isinstance(obj.get("choices"), list):
            return event + b"\n\n"
        if isinstance(obj.get("usage"), dict):
            self.usage = obj["usage"]
        out = b""
        for choice in obj["choices"]:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str) and content:
                out += self.delta(content)
        return out

    def delta(self, content: str) -> bytes:
        if self.head is not None:
            head = self.head + content
            if self.TAG in head:
                content = head.split(self.TAG, 1)[1]
            elif len(head) <= self.MAX_PREFIX and (
                head.startswith(self.PREFIX) or self.PREFIX.startswith(head)
            ):
                self.head = head
                return b""
            else:
                content = head
            self.head = None
        if not content:
            return b""
        self.text.append(content)
        return sse_event({"type": "transcript.text.delta", "delta": content, "logprobs": None})

    def done(self) -> bytes:
        out = b""
        if self.head:  # the stream ended while the start still looked like a header
            head, self.head = self.head, None
            out += self.delta(head)
        self.head = None
        event: dict[str, Any] = {
            "type": "transcript.text.done",
            "text": "".join(self.text),
            "logprobs": None,
        }
        usage = self.usage or {}
        if isinstance(usage.get("prompt_tokens"), int):
            event["usage"] = {
                "type": "tokens",
                "input_tokens": usage["prompt_tokens"],
                "output_tokens": usage.get("completion_tokens") or 0,
                "total_tokens": usage.get("total_tokens") or usage["prompt_tokens"],
            }
        return out + sse_event(event)


def usage_from_token_usage(event: bytes) -> bytes:
    """speaches' `speech.audio.done` event names its usage `token_usage`; OpenAI says `usage`."""
    payload = sse_data(event)
    if payload is None or b"token_usage" not in payload:
        return event + b"\n\n"
    try:
        obj = json.loads(payload)
    except ValueError:
        return event + b"\n\n"
    if isinstance(obj, dict) and "usage" not in obj and isinstance(obj.get("token_usage"), dict):
        obj["usage"] = obj.pop("token_usage")
        return sse_event(obj)
    return event + b"\n\n"
