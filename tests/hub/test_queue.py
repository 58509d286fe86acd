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


async def hold_stream(hub: HubApp, key: str) -> None:
    """A streamed chat that the agent never finishes (its ``stall_after``): in flight until
    cancelled."""
    stream = await hub.client(key).chat.completions.create(model="m1", messages=[], stream=True)
    async for _ in stream:
        pass


@pytest.mark.parametrize("news", ["more capacity", "another provider"])
async def test_a_heartbeat_that_brings_room_serves_the_waiting_request_at_once(
    tmp_path: Path, news: str
) -> None:
    """Issue 12's "goes to the first service that frees up": room reported by a heartbeat
    counts, not only a request of this hub ending. The request in flight never ends here,
    so the waiting one can only be served because of the heartbeat."""
    async with running_hub(tmp_path, queue_timeout=8, heartbeat_min_interval=0) as hub:
        key = await hub.user_with_key("alice")
        with FakeAgent(["m1"]) as busy, FakeAgent(["m1"]) as spare:
            busy.stall_after = 1
            await hub.heartbeat(key, "rig", busy.url, ONE_AT_A_TIME)
            first = asyncio.ensure_future(hold_stream(hub, key))
            try:
                assert await wait_until(lambda: len(busy.posts("/v1/chat/completions")) == 1)
                second = asyncio.ensure_future(ask(hub, key))
                assert await wait_until(lambda: hub.hub.fleet.queue.total() == 1)
                if news == "more capacity":
                    twice = [{**LLM[0], "max_concurrency": 2}]
                    assert (await hub.heartbeat(key, "rig", busy.url, twice))[0] == 200
                else:
                    assert (await hub.heartbeat(key, "rig2", spare.url, ONE_AT_A_TIME))[0] == 200
                await second  # served, not a 429 at queue_timeout
                assert not first.done(), "the request in flight is still running"
            finally:
                first.cancel()
        served_by_spare = len(spare.posts("/v1/chat/completions"))
        assert served_by_spare == (1 if news == "another provider" else 0)
        assert len(busy.posts("/v1/chat/completions")) == 2 - served_by_spare
