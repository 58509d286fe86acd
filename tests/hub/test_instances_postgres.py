"""`inferclub serve --db postgresql://...` end to end: two hub processes, as on two machines,
share users, keys, providers and history through one PostgreSQL database."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import openai
import pytest

from tests.support.fakes.agent import FakeAgent
from tests.support.hubproc import HubProcess
from tests.support.postgres import pg_schema

pytestmark = [pytest.mark.postgres, pytest.mark.subprocess]

LLM = [{"name": "chat", "type": "llm", "engine": "vllm", "models": ["m1"]}]


def _history(dsn: str) -> list[asyncpg.Record]:
    async def fetch() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch("SELECT * FROM requests ORDER BY started_at"))
        finally:
            await conn.close()

    return asyncio.run(fetch())


def _refused(client: openai.OpenAI) -> bool:
    try:
        client.models.list()
    except openai.AuthenticationError:
        return True
    return False


def test_two_hubs_on_postgresql_route_and_revoke_alike(tmp_path: Path) -> None:
    with pg_schema() as dsn:
        # Hubs on two machines: their own directories, the same database and secrets.
        env = {
            "INFERCLUB_REGISTRY_REFRESH": "0.2",
            "INFERCLUB_SECRETS_FILE": str(tmp_path / "secrets.json"),
        }
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        first = HubProcess(tmp_path / "a", env=env, db=dsn).start()
        second = HubProcess(tmp_path / "b", env=env, db=dsn).start()
        try:
            key = first.user_with_key("alice")
            with (
                FakeAgent(["m1"]) as agent,
                openai.OpenAI(base_url=first.api_base, api_key=key, max_retries=0) as via_a,
                openai.OpenAI(base_url=second.api_base, api_key=key, max_retries=0) as via_b,
            ):
                status, beat = first.heartbeat(key, "rig", agent.url, LLM)
                assert status == 200, beat
                deadline = time.monotonic() + 5
                while not via_b.models.list().data and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert [m.id for m in via_b.models.list().data] == ["m1"]
                assert via_b.chat.completions.create(model="m1", messages=[]).choices
                assert len(agent.posts("/v1/chat/completions")) == 1

                deadline = time.monotonic() + 10
                while not (rows := _history(dsn)) and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert [(r["endpoint"], r["status"], r["model"]) for r in rows] == [
                    ("/v1/chat/completions", 200, "m1")
                ]
                assert rows[0]["provider_id"] is not None

                listed = first.cli("keys", "list", "alice").stdout
                assert "active" in listed
                first.cli("keys", "revoke", "1")
                deadline = time.monotonic() + 5
                while not (_refused(via_a) and _refused(via_b)) and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert _refused(via_a) and _refused(via_b)
        finally:
            assert second.stop() == 0
            assert first.stop() == 0
