"""What only the PostgreSQL backend does: migrations under an advisory lock, and changes
pushed to other hubs with LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterator

import pytest

from inferclub.hub.store import PostgresStore, ServiceInfo, Store, StoreError
from inferclub.hub.store.pgschema import migrations
from tests.support.postgres import admin, pg_schema
from tests.support.stores import Backend, postgres_backend

pytestmark = pytest.mark.postgres

SERVICES = [ServiceInfo("chat", "llm", "vllm", (), ("m1",))]


@pytest.fixture
def pg() -> Iterator[Backend]:
    with postgres_backend() as backend:
        yield backend


def run(coro: Awaitable[None]) -> None:
    async def main() -> None:
        await coro

    asyncio.run(main())


async def _versions(store: Store) -> list[tuple[int, float]]:
    assert isinstance(store, PostgresStore)
    rows = await store.pool.fetch("SELECT version, applied_at FROM schema_migrations ORDER BY 1")
    return [(r[0], r[1]) for r in rows]


def test_migrations_are_recorded_once(pg: Backend) -> None:
    async def go() -> None:
        store = await pg.open()
        first = await _versions(store)
        assert [v for v, _ in first] == [v for v, _ in migrations()]
        await store.close()
        store = await pg.open()
        assert await _versions(store) == first, "re-opening applies nothing again"
        await store.close()

    run(go())


def test_two_stores_migrating_at_once(pg: Backend) -> None:
    async def go() -> None:
        stores = [PostgresStore(pg.db) for _ in range(3)]
        # Three hubs starting together on an empty schema: all open, the DDL runs once.
        await asyncio.gather(*(s.open() for s in stores))
        assert [v for v, _ in await _versions(stores[0])] == [v for v, _ in migrations()]
        user = await stores[1].create_user("alice")
        assert await stores[2].get_user("alice") == user
        for s in stores:
            await s.close()

    run(go())


class Heard:
    """What one store's listener delivered, in order."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    def __call__(self, channel: str, payload: str) -> None:
        self.queue.put_nowait((channel, payload))

    async def next(self, within: float = 1.0) -> tuple[str, str]:
        return await asyncio.wait_for(self.queue.get(), within)


def test_changes_reach_another_store_within_a_second(pg: Backend) -> None:
    async def go() -> None:
        writer, reader = await pg.open(), await pg.open()
        heard = Heard()
        await reader.listen(heard)
        user = await writer.create_user("alice")

        key = await writer.create_key(user.id, "", "ic_aaaaaaaa", "h1")
        assert await heard.next() == ("keys", str(key.id))
        assert await writer.revoke_key(key.id)
        assert await heard.next() == ("keys", str(key.id))

        other = await writer.create_key(user.id, "", "ic_bbbbbbbb", "h2")
        assert await heard.next() == ("keys", str(other.id))
        new = await writer.rotate_key(user.id, other.id, "ic_cccccccc", "h3")
        assert new is not None
        assert {await heard.next(), await heard.next()} == {
            ("keys", str(other.id)),
            ("keys", str(new.id)),
        }

        p = await writer.save_heartbeat(user.id, "rig", "http://h/v1", "", {}, SERVICES, 1.0)
        assert await heard.next() == ("providers", f"{user.id}:{p.id}")
        # A heartbeat that fails is rolled back, and so is its notification: the next thing
        # heard is the deletion that follows it.
        dup = SERVICES * 2
        with pytest.raises(pg.integrity_error):
            await writer.save_heartbeat(user.id, "rig", "http://h2/v1", "", {}, dup, 2.0)
        assert await writer.delete_provider(user.id, p.id)
        assert await heard.next() == ("providers", f"{user.id}:{p.id}")

        # Nothing is said when nothing changed.
        assert not await writer.revoke_key(key.id)
        assert not await writer.delete_provider(user.id, p.id)
        await writer.touch_keys({new.id: time.time()})
        marker = await writer.create_key(user.id, "", "ic_dddddddd", "h4")
        assert await heard.next() == ("keys", str(marker.id))
        await writer.close()
        await reader.close()

    run(go())


async def _listener_pids() -> set[int]:
    rows = await admin(
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = 'inferclub-listener'"
    )
    return {r[0] for r in rows}


def test_a_dropped_listener_reconnects_and_asks_for_a_reload(pg: Backend) -> None:
    async def go() -> None:
        writer, reader = await pg.open(), await pg.open()
        before = await _listener_pids()
        heard = Heard()
        await reader.listen(heard)
        [pid] = await _listener_pids() - before
        assert (await admin("SELECT pg_terminate_backend($1)", pid))[0][0] is True

        # Changes made while it was away were not heard: it asks for everything once.
        assert {await heard.next(within=15), await heard.next()} == {
            ("keys", ""),
            ("providers", ""),
        }
        user = await writer.create_user("alice")
        key = await writer.create_key(user.id, "", "ic_aaaaaaaa", "h1")
        assert await heard.next() == ("keys", str(key.id))
        await writer.close()
        await reader.close()

    run(go())


def test_a_failing_callback_does_not_stop_the_others(pg: Backend) -> None:
    async def go() -> None:
        writer, reader = await pg.open(), await pg.open()

        def broken(channel: str, payload: str) -> None:
            raise RuntimeError("subscriber bug")

        heard = Heard()
        await reader.listen(broken)
        await reader.listen(heard)
        user = await writer.create_user("alice")
        first = await writer.create_key(user.id, "", "ic_aaaaaaaa", "h1")
        second = await writer.create_key(user.id, "", "ic_bbbbbbbb", "h2")
        assert [await heard.next(), await heard.next()] == [
            ("keys", str(first.id)),
            ("keys", str(second.id)),
        ]
        await writer.close()
        await reader.close()

    run(go())


def test_a_missing_schema_is_a_store_error() -> None:
    with pg_schema() as dsn:
        missing = dsn.replace("search_path=", "search_path=no_such_schema_")

    async def go() -> None:
        with pytest.raises(StoreError, match="cannot open the database"):
            await PostgresStore(missing).open()

    run(go())
