"""The relay's parts without sockets: a fake upstream response feeds the stream and whole-body
relays, a fake sink stands for the client, and the meter's row is what history would store."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict
from tornado.iostream import StreamClosedError

from inferclub.hub.relay import Outcome, RequestMeter
from inferclub.hub.relay.stream import relay_stream
from inferclub.hub.relay.whole import relay_whole
from inferclub.hub.store import RequestFilter, SQLiteStore


class FakeSink:
    """The client's side: what a Tornado handler would have sent."""

    def __init__(self, closed_after: int | None = None) -> None:
        self.status = 200
        self.headers: dict[str, Any] = {}
        self.writes: list[bytes] = []
        self.flushed: list[bytes] = []
        self.streaming = False
        self._unflushed: list[bytes] = []
        self._closed_after = closed_after

    def set_status(self, status_code: int, reason: str | None = None) -> None:
        self.status = status_code

    def set_header(self, name: str, value: Any) -> None:
        self.headers[name] = value

    def write(self, chunk: bytes) -> None:
        self.writes.append(chunk)
        self._unflushed.append(chunk)

    def flush(self) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._closed_after is not None and len(self.flushed) >= self._closed_after:
            future.set_exception(StreamClosedError())
        else:
            self.flushed.append(b"".join(self._unflushed))
            self._unflushed = []
            future.set_result(None)
        return future

    def start_stream(self) -> None:
        self.streaming = True

    @property
    def body(self) -> bytes:
        return b"".join(self.writes)


class FakeContent:
    def __init__(self, chunks: list[bytes], then: BaseException | None, hang: bool) -> None:
        self._chunks, self._then, self._hang = chunks, then, hang

    async def iter_any(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk
        if self._then is not None:
            raise self._then
        if self._hang:
            await asyncio.Event().wait()


class FakeResponse:
    """An agent's answer as aiohttp hands it over: status, headers, body chunks."""

    def __init__(
        self,
        chunks: list[bytes],
        content_type: str = "text/event-stream",
        status: int = 200,
        then: BaseException | None = None,
        hang: bool = False,
    ) -> None:
        self.status = status
        self.headers = CIMultiDict({"Content-Type": content_type, "X-InferClub-Engine": "vllm"})
        self.content = FakeContent(chunks, then, hang)
        #: As aiohttp's: the ``Content-Length`` header as a number, None when absent.
        self.content_length: int | None = None


def meter(type_: str = "llm") -> RequestMeter:
    return RequestMeter(
        user_id=1, key_id=2, endpoint="/v1/chat/completions", type=type_, bytes_in=10
    )


def sse(obj: Any, sep: bytes = b"\n\n") -> bytes:
    return b"data: " + json.dumps(obj).encode() + sep


def chunk(text: str) -> dict[str, Any]:
    return {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}}],
    }


USAGE_ONLY = {
    "object": "chat.completion.chunk",
    "choices": [],
    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
}
AGENT_ERROR = {
    "error": {
        "message": "service 'chat' failed mid-stream: ClientPayloadError",
        "type": "server_error",
        "param": None,
        "code": "engine_stream_error",
    }
}


def splits(data: bytes, rng: random.Random) -> list[list[bytes]]:
    """Ways an upstream may cut ``data`` into chunks: at every single point, byte by byte,
    and at random points."""
    out = [[data[:i], data[i:]] for i in range(1, len(data))]
    out.append([data[i : i + 1] for i in range(len(data))])
    for _ in range(30):
        points = sorted(rng.sample(range(1, len(data)), 6))
        out.append([data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)])
    return out


# ------------------------------------------------------------------------- SSE cutting


async def test_sse_goes_out_in_whole_events_however_the_upstream_splits_it() -> None:
    events = [
        sse(chunk("Hello")),
        sse(chunk(" wor\nld"), b"\r\n\r\n"),  # sse-starlette ends events with CRLF
        b": keep-alive comment\n\n",
        sse(USAGE_ONLY),
        b"data: [DONE]\n\n",
    ]
    stream = b"".join(events)
    wanted = b"".join(e for e in events if e != sse(USAGE_ONLY))
    for pieces in splits(stream, random.Random(7)):
        sink, m = FakeSink(), meter()
        await relay_stream(sink, FakeResponse(pieces), m, idle=5, strip_usage=True)
        assert sink.body == wanted, pieces
        for out in sink.flushed:
            assert out.endswith((b"\n\n", b"\r\n\r\n")), (pieces, out)
        row = m.finished()
        assert (row.prompt_tokens, row.completion_tokens, row.status) == (7, 3, 200), pieces
        assert row.bytes_out == len(wanted)


async def test_usage_the_client_asked_for_is_relayed_and_recorded() -> None:
    stream = sse(chunk("a")) + sse(USAGE_ONLY) + b"data: [DONE]\n\n"
    sink, m = FakeSink(), meter()
    await relay_stream(sink, FakeResponse([stream[:30], stream[30:]]), m, 5, strip_usage=False)
    assert sink.body == stream
    assert m.finished().completion_tokens == 3


async def test_a_stream_without_a_final_blank_line_is_relayed_to_its_last_byte() -> None:
    sink, m = FakeSink(), meter()
    await relay_stream(sink, FakeResponse([sse(chunk("a")), b"data: [DO", b"NE]"]), m, 5, False)
    assert sink.body == sse(chunk("a")) + b"data: [DONE]"


async def test_raw_streams_are_relayed_chunk_by_chunk() -> None:
    audio = [b"RIFF", bytes(range(256)), b"tail"]
    sink, m = FakeSink(), meter("tts")
    await relay_stream(sink, FakeResponse(audio, "audio/wav"), m, 5, False)
    assert sink.flushed == audio and sink.streaming
    assert "X-Accel-Buffering" not in sink.headers
    # Only X-InferClub-Downgraded passes: the other X-InferClub-* headers are the hub's.
    assert "X-InferClub-Engine" not in sink.headers


# ------------------------------------------------------------------------ usage scanning


@pytest.mark.parametrize(
    ("type_", "body", "field", "value"),
    [
        ("llm", {"usage": {"prompt_tokens": 4, "completion_tokens": 9}}, "completion_tokens", 9),
        ("llm", {"usage": {"input_tokens": 4, "output_tokens": 6}}, "completion_tokens", 6),
        ("stt", {"text": "hi", "duration": "3.52"}, "audio_seconds", 3.52),  # vLLM: a string
        ("stt", {"text": "hi", "duration": 2.5}, "audio_seconds", 2.5),
        ("stt", {"text": "hi", "usage": {"type": "duration", "seconds": 4}}, "audio_seconds", 4.0),
        ("image", {"created": 1, "data": [{"b64_json": "x"}, {"b64_json": "y"}]}, "images", 2),
    ],
)
async def test_usage_is_read_from_whole_bodies(
    type_: str, body: dict[str, Any], field: str, value: Any
) -> None:
    raw = json.dumps(body).encode()
    sink, m = FakeSink(), meter(type_)
    await relay_whole(sink, FakeResponse([raw[:5], raw[5:]], "application/json"), m, 5)
    assert sink.body == raw and sink.headers["Content-Type"] == "application/json"
    row = m.finished()
    assert getattr(row, field) == value and row.status == 200 and row.bytes_out == len(raw)


async def test_a_duration_that_is_no_number_records_nothing() -> None:
    raw = json.dumps({"text": "hi", "duration": "n/a"}).encode()
    sink, m = FakeSink(), meter("stt")
    await relay_whole(sink, FakeResponse([raw], "application/json"), m, 5)
    assert m.finished().audio_seconds is None and sink.body == raw


async def test_transforms_apply_to_whole_success_bodies() -> None:
    def to_text(ctype: str, body: bytes) -> tuple[str, bytes]:
        return "text/plain", json.loads(body)["text"].encode()

    sink, m = FakeSink(), meter("stt")
    raw = b'{"text": "hello", "duration": "1.0"}'
    await relay_whole(sink, FakeResponse([raw], "application/json"), m, 5, to_text)
    assert (sink.headers["Content-Type"], sink.body) == ("text/plain", b"hello")
    assert m.finished().audio_seconds == 1.0


# ---------------------------------------------------------------------- meter outcomes


def test_meter_ok() -> None:
    m = meter()
    m.asked_for("m1")
    m.routed(3, "chat")
    m.first_byte()
    m.answered(200)
    m.sent(42)
    row = m.finished()
    assert (row.status, row.error_type, row.error_code, row.cancelled) == (200, None, None, False)
    assert (row.model, row.provider_id, row.service, row.bytes_out) == ("m1", 3, "chat", 42)
    assert row.id.startswith("req_") and len(row.id) == 28 and row.key_id == 2
    assert row.ttfb_ms is not None and row.duration_ms is not None
    assert row.duration_ms >= row.ttfb_ms and m.outcome is Outcome.OK


def test_meter_upstream_error_before_the_first_byte() -> None:
    m = meter()
    m.failed(502, "server_error", "upstream_unreachable")
    row = m.finished()
    assert (row.status, row.error_code) == (502, "upstream_unreachable")
    assert row.error_type == "server_error"
    assert row.ttfb_ms is None and not row.cancelled and m.outcome is Outcome.FAILED


async def test_meter_stream_broken_after_the_first_byte() -> None:
    sink, m = FakeSink(), meter()
    broke = aiohttp.ClientPayloadError("Response payload is not completed")
    await relay_stream(sink, FakeResponse([sse(chunk("a"))], then=broke), m, 5, False)
    assert sink.status == 200, "the client already had its headers"
    first, last = sink.flushed
    assert first == sse(chunk("a"))
    assert last.startswith(b"data: ") and last.endswith(b"\n\n")
    error = json.loads(last[6:])["error"]
    assert (
        error["code"] == "upstream_error" and "connection to the provider broke" in error["message"]
    )
    assert "Payload" not in error["message"] and "aiohttp" not in error["message"]
    row = m.finished()
    assert (row.status, row.error_type, row.error_code) == (502, "server_error", "upstream_error")
    assert not row.cancelled and row.bytes_out == len(sink.body)


async def test_meter_stream_ended_by_an_error_event_from_the_agent() -> None:
    events = [sse(chunk("a")), sse(AGENT_ERROR), b"data: [DONE]\n\n"]
    sink, m = FakeSink(), meter()
    await relay_stream(sink, FakeResponse(events), m, 5, strip_usage=True)
    assert sink.body == b"".join(events), "the agent's error event reaches the client as sent"
    row = m.finished()
    assert (row.status, row.error_type) == (502, "server_error")
    assert row.error_code == "engine_stream_error"


async def test_meter_stream_that_goes_idle() -> None:
    sink, m = FakeSink(), meter()
    await relay_stream(sink, FakeResponse([sse(chunk("a"))], hang=True), m, 0.05, False)
    assert b"sent nothing for 0.05 s" in sink.flushed[-1]
    row = m.finished()
    assert (row.status, row.error_code) == (504, "upstream_timeout")


async def test_a_client_gone_mid_stream_is_not_the_providers_fault() -> None:
    sink, m = FakeSink(closed_after=1), meter()
    with pytest.raises(StreamClosedError):
        await relay_stream(sink, FakeResponse([sse(chunk("a")), sse(chunk("b"))]), m, 5, False)
    assert m.outcome is None, "the handler records who closed the connection"


def test_meter_client_cancel_before_and_after_the_first_byte() -> None:
    before = meter()
    before.cancelled_by_client()
    row = before.finished()
    assert (row.status, row.cancelled, row.error_code) == (499, True, None)

    after = meter()
    after.first_byte()
    after.answered(200)
    after.cancelled_by_client()
    row = after.finished()
    assert (row.status, row.cancelled) == (200, True), "the answer was fine; the client left"
    assert after.outcome is Outcome.CANCELLED_BY_CLIENT


def test_meter_server_cut() -> None:
    m = meter()
    m.answered(200)
    m.cut_by_server()
    m.cancelled_by_client()  # the connection the hub closed is reported too: too late
    row = m.finished()
    assert (row.status, row.error_type) == (503, "server_error")
    assert row.error_code == "server_shutting_down"
    assert not row.cancelled and m.outcome is Outcome.CUT_BY_SERVER


def test_meter_first_ending_wins() -> None:
    m = meter()
    m.answered(200)
    m.failed(502, "server_error", "upstream_error")
    m.cancelled_by_client()
    m.answered(200)
    row = m.finished()
    assert (row.status, row.cancelled) == (502, False)


def test_meter_with_no_answer_and_no_failure_is_a_hub_error() -> None:
    row = meter().finished()
    assert (row.status, row.error_type) == (500, "server_error")


async def test_upstream_error_bodies_are_recorded_with_their_code() -> None:
    body = json.dumps({"error": {"message": "too long", "type": "BadRequestError", "code": 400}})
    sink, m = FakeSink(), meter()
    await relay_whole(sink, FakeResponse([body.encode()], "application/json", 400), m, 5)
    # The one normaliser: vLLM's class name and int status become the type for the status.
    assert sink.status == 400 and json.loads(sink.body)["error"]["type"] == "invalid_request_error"
    row = m.finished()
    assert (row.status, row.error_type, row.error_code) == (400, "invalid_request_error", None)

    body = json.dumps(
        {"error": {"message": "slow down", "type": "rate_limit_error", "code": "busy"}}
    )
    sink, m = FakeSink(), meter()
    await relay_whole(sink, FakeResponse([body.encode()], "application/json", 429), m, 5)
    row = m.finished()
    assert (row.status, row.error_type, row.error_code) == (429, "rate_limit_error", "busy")


# ------------------------------------------------------- what the requests page counts


async def test_broken_streams_and_cuts_count_as_errors_in_history(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "h.db")
    await store.open()
    try:
        ok, broken, cut, left = meter(), meter(), meter(), meter()
        for m in (ok, broken, cut, left):
            m.answered(200)
        broken.failed(502, "server_error", "upstream_error")
        cut.cut_by_server()
        left.cancelled_by_client()
        await store.add_requests([m.finished() for m in (ok, broken, cut, left)])
        (bucket,) = await store.request_buckets(1, None, 86400 * 365)
        assert (bucket.requests, bucket.errors) == (4, 2)
        (row,) = await store.list_requests(1, RequestFilter(status=503))
        assert (row.id, row.error_code, row.cancelled) == (cut.id, "server_shutting_down", False)
        (row,) = await store.list_requests(1, RequestFilter(status=502))
        assert (row.id, row.error_code) == (broken.id, "upstream_error")
    finally:
        await store.close()
