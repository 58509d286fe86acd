"""Key authentication stays off the store on the hot path."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from inferclub.hub import keys
from inferclub.hub.keycache import KeyCache
from inferclub.hub.store import SQLiteStore

PEPPER = b"p" * 32


class CountingStore(SQLiteStore):
    """The real SQLite store, counting key lookups."""

    lookups = 0

    async def find_active_key(self, key_hash: str) -> Any:
        self.lookups += 1
        return await super().find_active_key(key_hash)


def test_lookups_hit_the_store_once_and_revocation_is_seen(tmp_path: Path) -> None:
    async def go() -> None:
        store = CountingStore(tmp_path / "h.db")
        await store.open()
        user = await store.create_user("alice")
        key = keys.generate()
        record = await store.create_key(
            user.id, "", keys.display_prefix(key), keys.hash_key(PEPPER, key)
        )
        cache = KeyCache(store, PEPPER, refresh_interval=3600)
        await cache.start()

        # A bad checksum or a foreign format never reaches the store.
        # Nor does a key-sized token in Latin-1 (headers are decoded so) or outside the
        # alphabet: they are refused before they are hashed, not with a 500.
        latin = "ic_" + "\u00e9" * (keys.KEY_LEN - 3)
        odd = "ic_" + "!" * (keys.KEY_LEN - 3)
        for bad in (key[:-1] + ("0" if key[-1] != "0" else "1"), "sk-abc", "", latin, odd):
            assert await cache.authenticate(bad) is None
        assert store.lookups == 0

        # A valid key: one lookup, then served from memory.
        for _ in range(100):
            owner = await cache.authenticate(key)
            assert owner is not None and owner.user_id == user.id
        assert store.lookups == 1

        # An unknown but well-formed key is cached as unknown too.
        stranger = keys.generate()
        for _ in range(10):
            assert await cache.authenticate(stranger) is None
        assert store.lookups == 2

        # Revoked elsewhere (another process): the next refresh drops the cache.
        await store.revoke_key(record.id)
        assert await cache.authenticate(key) is not None, "still cached until the refresh"
        await cache.refresh()
        assert await cache.authenticate(key) is None
        await cache.stop()
        await store.close()

    asyncio.run(go())
