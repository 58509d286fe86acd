"""What only the SQLite backend does: its pragmas and its schema version."""

from __future__ import annotations

import asyncio
from pathlib import Path

from inferclub.hub.store import SQLiteStore
from inferclub.hub.store.sqlite import migrations


def test_migrations_and_pragmas(tmp_path: Path) -> None:
    async def go() -> None:
        store = SQLiteStore(tmp_path / "h.db")
        await store.open()
        db = store.db
        assert (await (await db.execute("PRAGMA journal_mode")).fetchone())[0] == "wal"
        assert (await (await db.execute("PRAGMA synchronous")).fetchone())[0] == 1
        assert (await (await db.execute("PRAGMA busy_timeout")).fetchone())[0] >= 5000
        version = (await (await db.execute("PRAGMA user_version")).fetchone())[0]
        assert version == migrations()[-1][0]
        await store.close()

    asyncio.run(go())
