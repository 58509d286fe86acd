"""`inferclub serve --db postgresql://...` end to end: two hub processes, as on two machines,
share users, keys, providers and history through one PostgreSQL database."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import openai
import pytest

from tests.support.fakes.agent import FakeAgent
from tests.support.hubproc import HubProcess, post_json, request_json, two_hubs_on_postgres
from tests.support.postgres import pg_schema

pytestmark = [pytest.mark.postgres, pytest.mark.subprocess]

LLM = [{"name": "chat", "type": "llm", "engine": "vllm", "models": ["m1"]}]


def _history(dsn: str, login: str) -> list[asyncpg.Record]:
    async def fetch() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(
                await conn.fetch(
                    "SELECT r.* FROM requests r JOIN users u ON u.id = r.user_id"
                    " WHERE u.login = $1 ORDER BY started_at",
                    login,
                )
            )
        finally:
            await conn.close()

    return asyncio.run(fetch())


def _refused(client: openai.OpenAI) -> bool:
    try:
        client.models.list()
    except openai.AuthenticationError:
        return True
    return False


class Load:
    """Chat requests through both hubs without pause, from threads, while a test checks."""

    def __init__(self, hubs: list[HubProcess], key: str) -> None:
        self.statuses: list[int] = []
        self._stop = threading.Event()
        chat = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}

        def run(hub: HubProcess) -> None:
            while not self._stop.is_set():
                self.statuses.append(post_json(hub.url, "/v1/chat/completions", chat, key)[0])

        self._threads = [threading.Thread(target=run, args=(h,)) for h in hubs * 2]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def _models(hub: HubProcess, key: str) -> list[object]:
    return list(request_json(hub.url, "GET", "/v1/models", None, key)[1]["data"])


def _within(seconds: float, cond: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_two_hubs_on_postgresql_route_and_revoke_alike(tmp_path: Path) -> None:
    with pg_schema() as dsn, two_hubs_on_postgres(tmp_path, dsn) as (first, second):
        key = first.user_with_key("alice")
        busy = first.user_with_key("bob")
        with (
            FakeAgent(["m1"]) as agent,
            openai.OpenAI(base_url=first.api_base, api_key=key, max_retries=0) as via_a,
            openai.OpenAI(base_url=second.api_base, api_key=key, max_retries=0) as via_b,
        ):
            # Bob's provider beat to the second hub, and his requests keep both busy.
            assert second.heartbeat(busy, "bobs-rig", agent.url, LLM)[0] == 200
            assert _within(1.0, lambda: bool(_models(first, busy)))
            with Load([first, second], busy) as load:
                status, beat = first.heartbeat(key, "rig", agent.url, LLM)
                assert status == 200, beat
                assert _within(1.0, lambda: bool(via_b.models.list().data))
                assert [m.id for m in via_b.models.list().data] == ["m1"]
                assert via_b.chat.completions.create(model="m1", messages=[]).choices

                first.cli("keys", "revoke", "1")
                served = len(load.statuses)
                assert _within(1.0, lambda: _refused(via_a) and _refused(via_b))
                assert _within(5.0, lambda: len(load.statuses) > served + 20)
            assert load.statuses and set(load.statuses) == {200}, "bob's key still works"

            deadline = time.monotonic() + 10
            while not (rows := _history(dsn, "alice")) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert [(r["endpoint"], r["status"], r["model"]) for r in rows] == [
                ("/v1/chat/completions", 200, "m1")
            ]
            assert rows[0]["provider_id"] is not None
