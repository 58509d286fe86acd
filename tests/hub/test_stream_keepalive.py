"""Streams that wait: a streamed chat still waiting for its first byte after
``stream_keepalive`` gets its 200 and ``: keepalive`` comments; no failover after that, and a
later failure is the stream's final error event. The real hub in-process, fake agents."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
from multidict import CIMultiDict

from tests.support.fakes.agent import LLM, FakeAgent
from tests.support.hubapp import HubApp, running_hub

CHAT = {"model": "m1", "messages": [], "stream": True}


async def raw_stream(hub: HubApp, key: str) -> tuple[int, CIMultiDict[str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            hub.api_base + "/chat/completions",
            json=CHAT,
            headers={"Authorization": f"Bearer {key}"},
        ) as resp,
    ):
        return resp.status, CIMultiDict(resp.headers), await resp.read()


async def test_a_slow_first_byte_gets_keepalive_comments_then_the_stream(tmp_path: Path) -> None:
    async with running_hub(tmp_path, stream_keepalive=0.2) as hub:
        key = await hub.user_with_key("alice")
        with FakeAgent(["m1"]) as agent:
            await hub.heartbeat(key, "rig", agent.url, LLM)
            agent.delay = 1.0  # a model loading
            status, headers, body = await raw_stream(hub, key)
            assert status == 200 and headers["Content-Type"] == "text/event-stream"
            assert body.startswith(b": keepalive\n\n")
            assert body.count(b": keepalive\n\n") >= 2
            assert body.rstrip().endswith(b"data: [DONE]")
            # The SDK skips the comments and reads the chunks as usual.
            agent.delay = 0.6
            chunks = await hub.client(key).chat.completions.create(
                model="m1", messages=[], stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
            assert text.startswith("tok0")
            # A quick stream sends no comment at all.
            agent.delay = 0
            assert b"keepalive" not in (await raw_stream(hub, key))[2]


async def test_after_the_keepalive_no_failover_and_errors_end_the_stream(tmp_path: Path) -> None:
    async with running_hub(tmp_path, stream_keepalive=0.2) as hub:
        key = await hub.user_with_key("alice")
        with FakeAgent(["m1"]) as first, FakeAgent(["m1"]) as second:
            await hub.heartbeat(key, "first", first.url, LLM)
            await hub.heartbeat(key, "second", second.url, LLM)
            first.delay, first.break_after = 0.6, 0  # then drops the connection, no headers
            status, headers, body = await raw_stream(hub, key)
            assert status == 200 and body.startswith(b": keepalive")
            assert headers["X-InferClub-Attempts"] == "1"  # the 200 was sent: no failover
            last = body.strip().split(b"\n\n")[-1]
            error = json.loads(last[len(b"data: ") :])["error"]
            assert error["code"] == "upstream_unreachable"
            assert not second.posts("/v1/chat/completions")
            rows = await hub.wait_for_request_rows(1)
            assert (rows[-1]["status"], rows[-1]["error_code"]) == (502, "upstream_unreachable")
