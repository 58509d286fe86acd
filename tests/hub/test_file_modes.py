"""The database, its WAL and shared-memory files and the secrets file are readable by their
owner only (issue 9): they hold key hashes, sessions, the pepper and usage history."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.support.hubapp import running_hub


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_a_new_database_and_secrets_file_are_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)  # a typical umask: files would be world-readable
    try:
        # The hub creates this database itself, not the tests' migrated copy.
        async with running_hub(tmp_path / "data", from_template=False) as hub:
            key = await hub.user_with_key("alice")
            assert key
            db = Path(hub.db)
            files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
            assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
            assert mode(db.with_name(db.name + ".secrets.json")) == 0o600
    finally:
        os.umask(old)


async def test_an_existing_world_readable_database_is_tightened(tmp_path: Path) -> None:
    async with running_hub(tmp_path):
        pass
    db = tmp_path / "hub.db"
    db.chmod(0o644)
    async with running_hub(tmp_path):
        assert mode(db) == 0o600
