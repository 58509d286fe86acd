"""SQLite's reader connections: reads go on while the one writer holds a long transaction
(as a big history batch would), and see what it committed once it has."""

from __future__ import annotations

import asyncio
from pathlib import Path

from inferclub.hub.store import SQLiteStore


async def test_reads_do_not_wait_for_a_write_in_progress(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "h.db")
    await store.open()
    try:
        await store.create_user("alice")
        holding, release = asyncio.Event(), asyncio.Event()

        async def long_write() -> None:
            async with store._write() as db:
                await db.execute("INSERT INTO users (login, created_at) VALUES ('bob', 0)")
                holding.set()
                await release.wait()

        writer = asyncio.create_task(long_write())
        await holding.wait()
        # Would hang (the writer holds the lock until released) if reads queued behind it;
        # the timeout only turns such a hang into a failure.
        users = await asyncio.wait_for(store.list_users(), 10)
        assert [u.login for u in users] == ["alice"]  # bob is not committed yet
        assert await asyncio.wait_for(store.keys_version(), 10) >= 0
        release.set()
        await writer
        assert [u.login for u in await store.list_users()] == ["alice", "bob"]
    finally:
        await store.close()
