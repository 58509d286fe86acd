"""A tenant's own agent is a stranger too: what it answers must not crash the hub, bloat
the history every row of which it can write, or make the store refuse the row."""

from __future__ import annotations

import asyncio
import json

import pytest
from tornado.httpclient import AsyncHTTPClient

from inferclub.openai_errors import MAX_MESSAGE
from tests.support.fakes.agent import FakeAgent
from tests.support.hubapp import HubApp, wait_until

DEEP = b"[" * 100_000 + b"]" * 100_000
HUGE = "9" * 4000  # parses (under the 4,300-digit limit), but fits no 64-bit column


async def chat(hub_app: HubApp, key: str) -> tuple[int, bytes]:
    """Status and raw body: the client side must not choke on what the hub relays either."""
    resp = await AsyncHTTPClient().fetch(
        hub_app.url + "/v1/chat/completions",
        method="POST",
        body=json.dumps({"model": "m1", "messages": [{"role": "user", "content": "hi"}]}),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        raise_error=False,
    )
    return resp.code, resp.body


def error_of(body: bytes) -> dict[str, object]:
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, DEEP),
        (400, b'{"error": {"message": "no", "detail": ' + DEEP + b"}}"),
        (200, b'{"usage": ' + DEEP + b"}"),
    ],
    ids=["deep-error", "deep-inside-error", "deep-usage"],
)
async def test_json_nested_too_deep_is_relayed_not_a_500(
    hub_app: HubApp, alice: str, fake_agent: FakeAgent, status: int, body: bytes
) -> None:
    # Before: Python's decoder hit its recursion limit and the client got a 500.
    fake_agent.raw_answer = (status, body)
    got, answer = await chat(hub_app, alice)
    assert got == status, answer[:300]
    if status >= 400:
        error_of(answer)
    (row,) = await hub_app.wait_for_request_rows(1)
    assert row["status"] == status


#: 10 MB of empty arrays: 3.3 million lists, seconds of the hub's event loop to decode.
MILLIONS = b"[" + b",".join([b"[]"] * 3_300_000) + b"]"


async def test_an_answer_of_millions_of_arrays_is_relayed_without_being_decoded(
    hub_app: HubApp, alice: str, fake_agent: FakeAgent
) -> None:
    usage = b'"usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}'
    body = b'{"object": "chat.completion", ' + usage + b', "x": ' + MILLIONS + b"}"
    fake_agent.raw_answer = (200, body)
    status, answer = await chat(hub_app, alice)
    assert status == 200 and answer == body
    (row,) = await hub_app.wait_for_request_rows(1)
    assert row["status"] == 200
    assert row["prompt_tokens"] is None  # the usage in it was not read: the body was not decoded


async def test_an_error_of_millions_of_arrays_is_taken_as_text(
    hub_app: HubApp, alice: str, fake_agent: FakeAgent
) -> None:
    error = b'{"error": {"message": "no", "type": "invalid_request_error"}, "x": '
    fake_agent.raw_answer = (400, error + MILLIONS + b"}")
    status, answer = await chat(hub_app, alice)
    assert status == 400
    err = error_of(answer)
    # Not decoded, so not "no": the start of the body's text, as for any error that is not JSON.
    assert str(err["message"]).startswith('{"error": {"message": "no"')
    assert len(str(err["message"])) == MAX_MESSAGE


async def test_an_agents_huge_error_code_and_param_are_not_kept(
    hub_app: HubApp, alice: str, fake_agent: FakeAgent
) -> None:
    error = {"message": "no", "type": "invalid_request_error", "code": "C" * 5_000_000}
    fake_agent.raw_answer = (
        400,
        json.dumps({"error": {**error, "param": "P" * 1_000_000}}).encode(),
    )
    status, answer = await chat(hub_app, alice)
    assert status == 400
    err = error_of(answer)
    assert err["param"] is None and len(str(err["code"] or "")) <= 100
    (row,) = await hub_app.wait_for_request_rows(1)
    assert len(row["error_code"] or "") <= 100


@pytest.mark.parametrize(
    "usage",
    [
        b'{"prompt_tokens": ' + HUGE.encode() + b', "completion_tokens": 3}',
        b'{"prompt_tokens": -5, "completion_tokens": 3}',
    ],
    ids=["4000-digits", "negative"],
)
async def test_impossible_token_counts_leave_the_row_written(
    hub_app: HubApp, alice: str, fake_agent: FakeAgent, usage: bytes
) -> None:
    # Before: the store refused the row (an integer past 64 bits) and the request vanished
    # from its owner's history.
    fake_agent.raw_answer = (200, b'{"object": "chat.completion", "usage": ' + usage + b"}")
    status, _ = await chat(hub_app, alice)
    assert status == 200
    (row,) = await hub_app.wait_for_request_rows(1)
    assert row["status"] == 200
    assert row["prompt_tokens"] is None and row["completion_tokens"] == 3


async def test_an_event_that_never_ends_is_relayed_not_held(hub_app: HubApp) -> None:
    """An agent's SSE event with no blank line after it was held (and re-copied with every
    chunk) until the agent stopped: a GiB of hub memory and a busy core for one request."""
    key = await hub_app.user_with_key("mallory")
    release = asyncio.Event()
    chunk = b"x" * 65536

    async def endless_event(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: ")
        for _ in range(128):  # 8 MiB, all one event
            writer.write(chunk)
            await writer.drain()
        await release.wait()
        writer.write(b"\n\n")
        writer.close()

    server = await asyncio.start_server(endless_event, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    services = [{"name": "chat", "type": "llm", "models": ["m1"]}]
    status, reply = await hub_app.heartbeat(key, "rig", f"http://127.0.0.1:{port}/v1", services)
    assert status == 200, reply
    received = 0

    def count(data: bytes) -> None:
        nonlocal received
        received += len(data)

    request = AsyncHTTPClient().fetch(
        hub_app.url + "/v1/chat/completions",
        method="POST",
        body=json.dumps({"model": "m1", "stream": True, "messages": []}),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        streaming_callback=count,
        request_timeout=60,
    )
    try:
        relayed_while_open = await wait_until(lambda: received >= 4 * 1024 * 1024, timeout=20)
    finally:
        release.set()
        resp = await request
        server.close()
    assert relayed_while_open, received
    assert resp.code == 200 and received > 8 * 1024 * 1024
