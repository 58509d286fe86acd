"""A store whose disk fails under traffic (every write raises SQLite's `disk I/O error`): the
in-process hub keeps routing and answering heartbeats for longer than the online window, routes
a description change it could not store, and writes it all once the disk works again."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import tornado.httputil

from inferclub import signing
from tests.support.fakes.agent import LLM, FakeAgent
from tests.support.hubapp import HubApp, running_hub, wait_until

WINDOW = 1.0


@asynccontextmanager
async def _broken_write(*_args: Any, **_kwargs: Any) -> AsyncIterator[Any]:
    raise sqlite3.OperationalError("disk I/O error")
    yield  # pragma: no cover - makes this an async generator


@asynccontextmanager
async def broken_disk(app: HubApp, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Every write of the hub's store fails while inside; reads still work (page cache)."""
    with monkeypatch.context() as patch:
        patch.setattr(app.hub.store, "_write", _broken_write)
        yield


async def test_heartbeats_and_inference_outlive_a_failing_disk(
    tmp_path: Path, fake_agent: FakeAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {
        "online_window": WINDOW,
        "last_seen_flush_interval": 0.1,
        "registry_refresh": 0.2,
        "history_flush_interval": 0.1,
    }
    async with running_hub(tmp_path, **settings) as app:
        key = await app.user_with_key("alice")
        assert (await app.heartbeat(key, "rig", fake_agent.url, LLM))[0] == 200
        client = app.client(key)
        async with broken_disk(app, monkeypatch):
            grown = [{**LLM[0], "models": ["m1", "shared"]}]
            deadline = time.monotonic() + 2.5 * WINDOW
            beats = chats = 0
            # Well past the online window, and enough rounds for every flush to have failed.
            while time.monotonic() < deadline or beats < 5:
                status, body = await app.heartbeat(key, "rig", fake_agent.url, grown)
                assert status == 200, body
                beats += 1
                for model in ("m1", "shared"):
                    reply = await client.chat.completions.create(
                        model=model, messages=[{"role": "user", "content": "hi"}]
                    )
                    assert reply.choices[0].message.content
                    chats += 1
                await asyncio.sleep(WINDOW / 4)
            assert "the store refused provider descriptions" in app.log()
            assert "the store refused last-seen times" in app.log()
            assert app.hub.liveness.description_failures.total >= beats
        # The disk works again: the next heartbeat stores the description it could not.
        assert (await app.heartbeat(key, "rig", fake_agent.url, grown))[0] == 200
        (row,) = app.query(
            "SELECT group_concat(m.model) AS models FROM service_models m"
            " JOIN services s ON s.id = m.service_id"
        )
        assert row["models"] == "m1,shared"
        assert "the store accepts provider descriptions again" in app.log()


async def test_last_seen_times_reach_the_store_in_batches(
    tmp_path: Path, fake_agent: FakeAgent
) -> None:
    async with running_hub(tmp_path, last_seen_flush_interval=0.2) as app:
        key = await app.user_with_key("alice")
        assert (await app.heartbeat(key, "rig", fake_agent.url, LLM))[0] == 200
        (first,) = app.query("SELECT last_heartbeat_at, health FROM providers")
        await asyncio.sleep(0.05)
        status, _ = await app.heartbeat(
            key, "rig", fake_agent.url, LLM, health={"load": [0.5, 0.4, 0.3]}
        )
        assert status == 200

        def stored() -> bool:
            (row,) = app.query("SELECT last_heartbeat_at, health FROM providers")
            return bool(row["last_heartbeat_at"] > first["last_heartbeat_at"])

        assert await wait_until(stored)
        (row,) = app.query("SELECT health FROM providers")
        assert row["health"] == '{"load":[0.5,0.4,0.3]}'


async def test_a_new_provider_on_a_failing_store_is_served_and_routed(
    tmp_path: Path, fake_agent: FakeAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_hub(tmp_path, history_flush_interval=0.2) as app:
        key = await app.user_with_key("alice")
        client = app.client(key)
        async with broken_disk(app, monkeypatch):
            for _ in range(2):
                status, body = await app.heartbeat(key, "rig", fake_agent.url, LLM)
                assert status == 200, body
                assert body["provider_id"] < 0  # provisional: not stored yet
            reply = await client.chat.completions.create(
                model="m1", messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.choices[0].message.content
            # ... signed for the provisional id the agent was given in the reply.
            assert_signed_for(app, fake_agent, body["provider_id"])
            assert [m.id for m in (await client.models.list()).data] == ["m1"]
        assert app.query("SELECT id FROM providers") == []
        # The disk works again: the next beat stores the provider under its real id, and it
        # is routed once, not twice.
        status, body = await app.heartbeat(key, "rig", fake_agent.url, LLM)
        assert status == 200 and body["provider_id"] == 1
        assert [r["name"] for r in app.query("SELECT name FROM providers")] == ["rig"]
        (user,) = app.query("SELECT id FROM users")
        assert [p.id for p in app.hub.registry.providers(user["id"])] == [1]
        await client.chat.completions.create(model="m1", messages=[])
        assert_signed_for(app, fake_agent, 1)

        def history() -> list[Any]:
            return app.query("SELECT provider_id FROM requests ORDER BY started_at")

        # The request served while the provider was only in memory names no provider.
        assert await wait_until(lambda: len(history()) == 2)
        assert [r["provider_id"] for r in history()] == [None, 1]


def assert_signed_for(app: HubApp, agent: FakeAgent, provider_id: int) -> None:
    """The agent's last chat was signed by this hub for ``provider_id``: what a real agent
    told that id in its heartbeat reply would accept."""
    sent = agent.posts("/v1/chat/completions")[-1]
    verifier = signing.RequestVerifier(app.hub.signer.public_key)
    target = sent.path + (f"?{sent.query}" if sent.query else "")
    headers = tornado.httputil.HTTPHeaders(sent.headers)
    verifier.verify("POST", target, headers, sent.body, str(provider_id))
