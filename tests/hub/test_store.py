"""The SQLite store: migrations, pragmas, atomic heartbeats, concurrent writers."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from inferclub.hub.store import (
    AlreadyExists,
    RequestFilter,
    RequestRecord,
    ServiceInfo,
    SQLiteStore,
)
from inferclub.hub.store.sqlite import migrations


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def _open(path: Path) -> SQLiteStore:
    store = SQLiteStore(path)
    await store.open()
    return store


def test_migrations_and_pragmas(tmp_path: Path) -> None:
    async def go() -> None:
        store = await _open(tmp_path / "h.db")
        db = store.db
        assert (await (await db.execute("PRAGMA journal_mode")).fetchone())[0] == "wal"
        assert (await (await db.execute("PRAGMA synchronous")).fetchone())[0] == 1
        assert (await (await db.execute("PRAGMA busy_timeout")).fetchone())[0] >= 5000
        assert (await (await db.execute("PRAGMA user_version")).fetchone())[0] == migrations()[-1][
            0
        ]
        await store.close()
        # Re-opening applies nothing twice.
        store = await _open(tmp_path / "h.db")
        await store.close()

    run(go())


def test_users_keys_and_versions(tmp_path: Path) -> None:
    async def go() -> None:
        store = await _open(tmp_path / "h.db")
        user = await store.create_user("alice")
        with pytest.raises(AlreadyExists):
            await store.create_user("alice")
        v0 = await store.keys_version()
        key = await store.create_key(user.id, "laptop", "ic_abcdefgh", "h1")
        assert await store.keys_version() == v0 + 1
        owner = await store.find_active_key("h1")
        assert owner is not None and (owner.user_id, owner.login) == (user.id, "alice")
        new = await store.rotate_key(user.id, key.id, "ic_ijklmnop", "h2")
        assert new is not None and new.name == "laptop"
        assert await store.find_active_key("h1") is None
        assert await store.find_active_key("h2") is not None
        assert await store.keys_version() == v0 + 3
        assert not await store.revoke_key(new.id, user_id=user.id + 1), "another user's key"
        assert await store.revoke_key(new.id, user_id=user.id)
        assert [k.active for k in await store.list_keys(user.id)] == [False, False]
        await store.close()

    run(go())


def test_github_users_keyed_by_numeric_id(tmp_path: Path) -> None:
    async def go() -> None:
        store = await _open(tmp_path / "h.db")
        a = await store.upsert_github_user(42, "octo")
        b = await store.upsert_github_user(42, "octo-renamed")
        assert a.id == b.id and (await store.get_user("octo-renamed")) is not None
        c = await store.upsert_github_user(43, "octo")
        assert c.id != a.id
        await store.close()

    run(go())


def test_heartbeat_replaces_services_atomically(tmp_path: Path) -> None:
    async def go() -> None:
        store = await _open(tmp_path / "h.db")
        user = await store.create_user("alice")
        svc = [
            ServiceInfo("a", "llm", "vllm", ("x",), ("m1", "m2")),
            ServiceInfo("b", "stt", "whisper", (), ("w",)),
        ]
        p1 = await store.save_heartbeat(user.id, "rig", "http://h/v1", "1", {"up": 1}, svc, 100.0)
        p2 = await store.save_heartbeat(user.id, "rig", "http://h2/v1", "2", {}, svc[:1], 200.0)
        assert p1.id == p2.id and p2.created_at == p1.created_at
        # A failing write (duplicate service name violates UNIQUE) leaves the old state whole.
        dup = [
            ServiceInfo("a", "llm", "vllm", (), ("z",)),
            ServiceInfo("a", "llm", "vllm", (), ("y",)),
        ]
        with pytest.raises(sqlite3.IntegrityError):
            await store.save_heartbeat(user.id, "rig", "http://h3/v1", "3", {}, dup, 300.0)
        [p] = await store.list_providers(user.id)
        assert (p.callback_url, p.last_heartbeat_at) == ("http://h2/v1", 200.0)
        assert p.services == (ServiceInfo("a", "llm", "vllm", ("x",), ("m1", "m2")),)
        await store.close()

    run(go())


def test_two_connections_writing_at_once_never_see_locked(tmp_path: Path) -> None:
    async def go() -> None:
        a = await _open(tmp_path / "h.db")
        b = await _open(tmp_path / "h.db")
        user = await a.create_user("alice")

        async def writes(store: SQLiteStore, tag: str) -> None:
            for i in range(100):
                await store.add_requests(
                    [RequestRecord(f"{tag}{i}", user.id, "/v1/x", float(i), 200)]
                )
                await store.save_heartbeat(user.id, tag, "http://h/v1", "", {}, [], float(i))

        await asyncio.gather(writes(a, "a"), writes(b, "b"))
        assert await a.count_requests(user.id) == 200
        assert await a.count_requests(user.id, RequestFilter(since=50.0)) == 100
        page = await a.list_requests(user.id, limit=3)
        assert [r.started_at for r in page] == [99.0, 99.0, 98.0]
        await a.close()
        await b.close()

    run(go())


def test_a_writer_cancelled_mid_transaction_leaves_the_store_usable(tmp_path: Path) -> None:
    async def go() -> None:
        store = await _open(tmp_path / "h.db")
        try:
            await cancel_writes(store)
        finally:
            await store.close()  # or aiosqlite's thread keeps the test process alive

    async def cancel_writes(store: SQLiteStore) -> None:
        user = await store.create_user("alice")
        for step in range(6):
            # Cancel at each point of a write: before BEGIN ran, inside, around COMMIT.
            task = asyncio.create_task(
                store.add_requests([RequestRecord(f"r{step}", user.id, "/v1/x", 1.0, 200)])
            )
            for _ in range(step):
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await store.create_user(f"u{step}")  # the next write works
        assert await store.count_requests(user.id) <= 6

    run(go())
