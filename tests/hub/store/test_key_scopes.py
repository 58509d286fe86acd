"""Key scopes and provider name ownership in the store, on SQLite and PostgreSQL: the scope a
key is created with, and which key a provider name belongs to through heartbeats, rotations
and revocations. Also the migration that brings both to a database made before them."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable
from pathlib import Path

import asyncpg
import pytest

from inferclub.hub.store import ProviderNameTaken, ServiceInfo, Store, pgschema
from inferclub.hub.store.sqlite import migrations
from tests.support.stores import Backend

CHAT = [ServiceInfo("chat", "llm", "vllm", (), ("m1",))]


def run(coro: Awaitable[None]) -> None:
    async def main() -> None:
        await coro

    asyncio.run(main())


async def beat(store: Store, user_id: int, url: str, key_id: int | None, name: str = "rig") -> str:
    """A heartbeat of ``name`` with ``key_id``: the callback URL the store holds afterwards."""
    record = await store.save_heartbeat(user_id, name, url, "1", {}, CHAT, 1.0, key_id)
    return record.callback_url


async def stored_url(store: Store, user_id: int, name: str = "rig") -> tuple[str, int | None]:
    (found,) = [p for p in await store.list_providers(user_id) if p.name == name]
    return found.callback_url, found.key_id


def test_a_key_keeps_its_scope_through_listing_lookup_and_rotation(backend: Backend) -> None:
    async def go() -> None:
        store = await backend.open()
        alice = await store.create_user("alice")
        plain = await store.create_key(alice.id, "", "ic_aaaaaaaa", "h1")
        agent = await store.create_key(alice.id, "rig", "ic_bbbbbbbb", "h2", "agent")
        assert (plain.scope, agent.scope) == ("all", "agent")
        assert [k.scope for k in await store.list_keys(alice.id)] == ["all", "agent"]
        owner = await store.find_active_key("h2")
        assert owner is not None and owner.scope == "agent"
        new = await store.rotate_key(alice.id, agent.id, "ic_cccccccc", "h3")
        assert new is not None and new.scope == "agent"
        assert await store.get_key(alice.id, new.id) == new
        with pytest.raises(backend.integrity_error):
            await store.create_key(alice.id, "", "ic_dddddddd", "h4", "admin")
        await store.close()

    run(go())


def test_a_provider_name_belongs_to_the_key_that_registered_it(backend: Backend) -> None:
    async def go() -> None:
        store = await backend.open()
        alice = await store.create_user("alice")
        bob = await store.create_user("bob")
        k1 = await store.create_key(alice.id, "", "ic_aaaaaaaa", "h1")
        k2 = await store.create_key(alice.id, "", "ic_bbbbbbbb", "h2")
        kb = await store.create_key(bob.id, "", "ic_cccccccc", "h3")
        assert await beat(store, alice.id, "http://rig/v1", k1.id) == "http://rig/v1"
        with pytest.raises(ProviderNameTaken):
            await beat(store, alice.id, "http://evil/v1", k2.id)
        assert await stored_url(store, alice.id) == ("http://rig/v1", k1.id), "nothing changed"
        # Another user's name is another name; another name of the same user is free.
        assert await beat(store, bob.id, "http://bob/v1", kb.id) == "http://bob/v1"
        assert await beat(store, alice.id, "http://box/v1", k2.id, "box") == "http://box/v1"
        # A heartbeat without a key (none comes from the API) keeps the binding.
        assert await beat(store, alice.id, "http://rig2/v1", None) == "http://rig2/v1"
        assert await stored_url(store, alice.id) == ("http://rig2/v1", k1.id)
        await store.close()

    run(go())


def test_rotation_carries_the_name_over_and_revocation_frees_it(backend: Backend) -> None:
    async def go() -> None:
        store = await backend.open()
        alice = await store.create_user("alice")
        k1 = await store.create_key(alice.id, "", "ic_aaaaaaaa", "h1")
        k2 = await store.create_key(alice.id, "", "ic_bbbbbbbb", "h2")
        await beat(store, alice.id, "http://rig/v1", k1.id)
        rotated = await store.rotate_key(alice.id, k1.id, "ic_cccccccc", "h3")
        assert rotated is not None
        assert await stored_url(store, alice.id) == ("http://rig/v1", rotated.id)
        with pytest.raises(ProviderNameTaken):
            await beat(store, alice.id, "http://evil/v1", k2.id)
        assert await beat(store, alice.id, "http://rig3/v1", rotated.id) == "http://rig3/v1"

        assert await store.revoke_key(rotated.id, alice.id)
        assert await stored_url(store, alice.id) == ("http://rig3/v1", None)
        assert await beat(store, alice.id, "http://new/v1", k2.id) == "http://new/v1"
        assert await stored_url(store, alice.id) == ("http://new/v1", k2.id)
        await store.close()

    run(go())


# -- the migration ----------------------------------------------------------------------------

#: A database as issue 9 found it: a key and a provider made before scopes, the GitHub user
#: `hubber` (id 4) whose sign-in renamed the local user `hubber` (id 3) to `hubber~3`, and a
#: GitHub user `octo` whose login no local user holds.
OLD_ROWS = [
    "INSERT INTO users (id, login, github_id, created_at) VALUES (1, 'alice', NULL, 0),"
    " (2, 'octo', 42, 0), (3, 'hubber~3', NULL, 0), (4, 'hubber', 44, 0)",
    "INSERT INTO api_keys (id, user_id, name, prefix, hash, created_at)"
    " VALUES (1, 1, '', 'ic_aaaaaaaa', 'h1', 0)",
    "INSERT INTO providers (id, user_id, name, callback_url, created_at, last_heartbeat_at)"
    " VALUES (1, 1, 'rig', 'http://rig/v1', 0, 0)",
]


def old_sqlite(path: Path) -> None:
    con = sqlite3.connect(path)
    try:
        for version, sql in migrations():
            if version <= 5:
                con.executescript(sql)
        con.execute("PRAGMA user_version = 5")
        for sql in OLD_ROWS:
            con.execute(sql)
        con.commit()
    finally:
        con.close()


async def old_postgres(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TABLE schema_migrations"
            " (version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
        )
        for version, sql in pgschema.migrations():
            if version <= 4:
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations VALUES ($1, 0)", version)
        for sql in OLD_ROWS:
            # Identity columns take explicit ids only when told to, and then their sequences
            # must be moved past them.
            await conn.execute(sql.replace(") VALUES", ") OVERRIDING SYSTEM VALUE VALUES", 1))
        for table in ("users", "api_keys", "providers"):
            await conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), 100)")
    finally:
        await conn.close()


def test_the_migration_scopes_old_keys_all_and_separates_github_users(backend: Backend) -> None:
    async def go() -> None:
        if backend.name == "sqlite":
            old_sqlite(Path(backend.db))
        else:
            await old_postgres(backend.db)
        store = await backend.open()
        owner = await store.find_active_key("h1")
        assert owner is not None and owner.scope == "all"
        assert sorted((u.id, u.login) for u in await store.list_users()) == [
            (1, "alice"),
            (2, "@octo"),
            (3, "hubber"),
            (4, "@hubber"),
        ]
        # The old provider is bound by the next heartbeat, whichever key of alice sends it.
        assert await stored_url(store, 1) == ("http://rig/v1", None)
        key = await store.create_key(1, "", "ic_bbbbbbbb", "h2")
        assert await beat(store, 1, "http://rig2/v1", key.id) == "http://rig2/v1"
        with pytest.raises(ProviderNameTaken):
            await beat(store, 1, "http://evil/v1", 1)
        await store.close()

    run(go())
