"""Waiting instead of failing when every provider is busy: the real hub in-process, a fake
agent whose one service takes one request at a time (``max_concurrency: 1``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import openai
import pytest

from tests.support.fakes.agent import LLM, FakeAgent
from tests.support.hubapp import HubApp, request_id_of, running_hub, wait_until

ONE_AT_A_TIME = [{**LLM[0], "max_concurrency": 1}]


async def ask(hub: HubApp, key: str) -> str:
    """A chat through the SDK: the request id of its answer."""
    raw = await hub.client(key).chat.completions.with_raw_response.create(model="m1", messages=[])
    return raw.headers["X-Request-Id"]


async def test_the_next_request_waits_for_the_busy_provider_then_is_served(
    tmp_path: Path,
) -> None:
    async with running_hub(tmp_path, queue_timeout=10) as hub:
        key = await hub.user_with_key("alice")
        with FakeAgent(["m1"]) as agent:
            await hub.heartbeat(key, "rig", agent.url, ONE_AT_A_TIME)
            agent.hold()
            first = asyncio.ensure_future(ask(hub, key))
            assert await wait_until(lambda: len(agent.posts("/v1/chat/completions")) == 1)
            second = asyncio.ensure_future(ask(hub, key))
            queue = hub.hub.fleet.queue
            assert await wait_until(lambda: queue.total() == 1)
            # It waits in the hub, not at the agent: one request reached the agent so far.
            assert len(agent.posts("/v1/chat/completions")) == 1
            agent.release()
            await asyncio.gather(first, second)
            assert len(agent.posts("/v1/chat/completions")) == 2
            assert queue.total() == 0


async def test_past_queue_timeout_the_answer_is_429_all_providers_busy(tmp_path: Path) -> None:
    async with running_hub(tmp_path, queue_timeout=0.3) as hub:
        key = await hub.user_with_key("alice")
        with FakeAgent(["m1"]) as agent:
            await hub.heartbeat(key, "rig", agent.url, ONE_AT_A_TIME)
            agent.hold()
            first = asyncio.ensure_future(ask(hub, key))
            assert await wait_until(lambda: len(agent.posts("/v1/chat/completions")) == 1)
            with pytest.raises(openai.RateLimitError) as exc:
                await ask(hub, key)
            assert request_id_of(exc.value)
            assert exc.value.code == "all_providers_busy"
            assert exc.value.response.headers["Retry-After"] == "5"
            assert exc.value.response.headers["X-Request-Id"].startswith("req_")
            agent.release()
            await first
            rows = await hub.wait_for_request_rows(2)
            assert sorted((r["status"], r["error_code"]) for r in rows) == [
                (200, None),
                (429, "all_providers_busy"),
            ]


async def test_the_queue_is_bounded_and_a_client_that_leaves_leaves_it(tmp_path: Path) -> None:
    async with running_hub(tmp_path, queue_timeout=10, max_queue_per_user=1) as hub:
        key = await hub.user_with_key("alice")
        with FakeAgent(["m1"]) as agent:
            await hub.heartbeat(key, "rig", agent.url, ONE_AT_A_TIME)
            agent.hold()
            first = asyncio.ensure_future(ask(hub, key))
            assert await wait_until(lambda: len(agent.posts("/v1/chat/completions")) == 1)
            queue = hub.hub.fleet.queue
            waiting = asyncio.ensure_future(ask(hub, key))
            assert await wait_until(lambda: queue.total() == 1)
            with pytest.raises(openai.RateLimitError) as exc:
                await ask(hub, key)  # the queue is full: refused at once
            assert request_id_of(exc.value)
            assert exc.value.code == "all_providers_busy"
            waiting.cancel()  # the client gives up
            assert await wait_until(lambda: queue.total() == 0)
            agent.release()
            await first
            assert len(agent.posts("/v1/chat/completions")) == 1
