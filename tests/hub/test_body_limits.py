"""Body limits of the /v1 API (hub in-process): a declared oversize body is refused with a 413
before it is read, a slightly oversize one is drained so the connection stays usable, a
chunked one is counted as it arrives, and each endpoint has its own limit. Nothing oversize
ever reaches the agent."""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
from tornado.ioloop import IOLoop

from tests.support.fakes.agent import FakeAgent
from tests.support.hubapp import HubApp, running_hub

JSON_LIMIT, AUDIO_LIMIT = 1000, 50_000
SERVICES = [
    {"name": "chat", "type": "llm", "engine": "vllm", "models": ["m1"]},
    {"name": "ears", "type": "stt", "engine": "whisper", "models": ["whisper-1"]},
]


@pytest.fixture
def limited_hub(tmp_path: Path, fake_agent: FakeAgent, io_loop: IOLoop) -> Iterator[HubApp]:
    """A hub with small limits; the fake agent serves chat and stt for `limited_key`."""
    hub = running_hub(tmp_path, max_json_body=JSON_LIMIT, max_audio_body=AUDIO_LIMIT)
    app = io_loop.run_sync(hub.__aenter__)
    try:
        yield app
    finally:
        io_loop.run_sync(lambda: hub.__aexit__(None, None, None))


@pytest.fixture
def limited_key(limited_hub: HubApp, fake_agent: FakeAgent, io_loop: IOLoop) -> str:
    async def register() -> str:
        key = await limited_hub.user_with_key("alice")
        assert (await limited_hub.heartbeat(key, "rig", fake_agent.url, SERVICES))[0] == 200
        return key

    return io_loop.run_sync(register)


def forwarded(agent: FakeAgent) -> list[str]:
    return [r.path for r in agent.requests if r.method == "POST"]


async def test_an_oversize_content_length_is_refused_before_the_body_is_sent(
    limited_hub: HubApp, limited_key: str, fake_agent: FakeAgent
) -> None:
    parts = urlsplit(limited_hub.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\n"
        f"Host: {parts.netloc}\r\n"
        f"Authorization: Bearer {limited_key}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {100 * JSON_LIMIT}\r\n\r\n"
    )
    writer.write(head.encode())  # ...and not one byte of the body
    await writer.drain()
    try:
        status_line = await asyncio.wait_for(reader.readline(), 10)
        headers = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = next(
            int(line.split(b":")[1])
            for line in headers.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        body = json.loads(await reader.readexactly(length))
    finally:
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 413 ")
    assert body["error"]["code"] == "request_too_large"
    assert body["error"]["message"] == (
        f"The request body is larger than the limit of {JSON_LIMIT} bytes."
    )
    assert forwarded(fake_agent) == []


def _two_requests_on_one_connection(
    url: str, key: str, first: bytes, second: bytes
) -> list[tuple[int, Any]]:
    """Both answers, and proof (one socket) that the connection survived the first."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    answers = []
    try:
        sockets = set()
        for body in (first, second):
            conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
            resp = conn.getresponse()
            answers.append((resp.status, json.loads(resp.read())))
            assert conn.sock is not None, "the hub closed the connection after the 413"
            sockets.add(conn.sock.getsockname())
        assert len(sockets) == 1, "the second request needed a new connection"
    finally:
        conn.close()
    return answers


async def test_a_body_a_little_over_the_limit_is_drained_and_the_connection_reused(
    limited_hub: HubApp, limited_key: str, fake_agent: FakeAgent
) -> None:
    oversize = json.dumps({"model": "m1", "messages": [], "pad": "x" * 2 * JSON_LIMIT}).encode()
    fine = json.dumps({"model": "m1", "messages": []}).encode()
    (status, err), (ok, reply) = await asyncio.to_thread(
        _two_requests_on_one_connection, limited_hub.url, limited_key, oversize, fine
    )
    assert (status, err["error"]["code"]) == (413, "request_too_large")
    assert ok == 200 and reply["choices"][0]["message"]["content"]
    assert forwarded(fake_agent) == ["/v1/chat/completions"], "only the second one"


def _chunked(url: str, key: str, chunks: list[bytes]) -> tuple[int, Any]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    try:
        conn.request(
            "POST", "/v1/chat/completions", body=iter(chunks), headers=headers, encode_chunked=True
        )
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


async def test_a_chunked_body_is_counted_as_it_arrives(
    limited_hub: HubApp, limited_key: str, fake_agent: FakeAgent
) -> None:
    chunks = [b'{"model": "m1", "messages": [], "pad": "'] + [b"x" * 300] * 5 + [b'"}']
    status, err = await asyncio.to_thread(_chunked, limited_hub.url, limited_key, chunks)
    assert (status, err["error"]["code"]) == (413, "request_too_large")
    small = [b'{"model": "m1", ', b'"messages": []}']
    status, reply = await asyncio.to_thread(_chunked, limited_hub.url, limited_key, small)
    assert status == 200 and reply["choices"]
    assert forwarded(fake_agent) == ["/v1/chat/completions"]


async def test_uploads_have_their_own_limit(
    limited_hub: HubApp, limited_key: str, fake_agent: FakeAgent
) -> None:
    c = limited_hub.client(limited_key)
    within = await c.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", bytes(20 * JSON_LIMIT))
    )
    assert within.text == fake_agent.transcript, "far over the JSON limit, within the audio one"
    with pytest.raises(openai.APIStatusError) as exc:
        await c.audio.transcriptions.create(model="whisper-1", file=("a.wav", bytes(AUDIO_LIMIT)))
    assert exc.value.status_code == 413
    assert f"limit of {AUDIO_LIMIT} bytes" in exc.value.message
    assert forwarded(fake_agent) == ["/v1/audio/transcriptions"]
