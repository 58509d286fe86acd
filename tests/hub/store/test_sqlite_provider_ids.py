"""Migration 0005 on a database made before it: `providers` is rebuilt with AUTOINCREMENT,
keeping every row, id and service, and new ids start above every id the history mentions."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from inferclub.hub.store import ServiceInfo, SQLiteStore
from inferclub.hub.store.sqlite import migrations

CHAT = [ServiceInfo("chat", "llm", "vllm", [], ["m1"])]


def old_database(path: Path) -> None:
    """A version-3 database: two providers with services, and history naming provider 9,
    deleted before the upgrade."""
    con = sqlite3.connect(path)
    try:
        for version, sql in migrations():
            if version <= 3:
                con.executescript(sql)
        con.executescript(
            """
            PRAGMA user_version = 3;
            INSERT INTO users (id, login, created_at) VALUES (1, 'alice', 0);
            INSERT INTO providers (id, user_id, name, callback_url, created_at, last_heartbeat_at)
                VALUES (3, 1, 'rig', 'http://h/v1', 0, 0), (5, 1, 'box', 'http://b/v1', 0, 0);
            INSERT INTO services (provider_id, position, name, type, engine)
                VALUES (3, 0, 'chat', 'llm', 'vllm');
            INSERT INTO requests (id, user_id, provider_id, endpoint, status, started_at)
                VALUES ('r1', 1, 9, '/v1/chat/completions', 200, 0);
            """
        )
        con.commit()
    finally:
        con.close()


def test_the_rebuild_keeps_rows_and_never_reuses_a_historic_id(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old_database(path)

    async def go() -> None:
        store = SQLiteStore(path)
        await store.open()
        try:
            providers = await store.list_providers(1)
            assert sorted((p.id, p.name) for p in providers) == [(3, "rig"), (5, "box")]
            rig = next(p for p in providers if p.name == "rig")
            assert [s.name for s in rig.services] == ["chat"]
            new = await store.save_heartbeat(1, "new", "http://n/v1", "", {}, CHAT, 1.0)
            assert new.id == 10
            assert await store.delete_provider(1, new.id)
            again = await store.save_heartbeat(1, "new", "http://n/v1", "", {}, CHAT, 2.0)
            assert again.id == 11
            fk = await (await store.db.execute("PRAGMA foreign_keys")).fetchone()
            assert fk[0] == 1
        finally:
            await store.close()

    asyncio.run(go())
