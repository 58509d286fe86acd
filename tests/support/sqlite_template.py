"""A migrated SQLite database for tests, made once per test process and copied per test.

Migrating a new database was half of what an in-process hub cost to start (every
``migrations/*.sql`` statement through aiosqlite's thread: 31 ms of CPU against 9 ms to copy and
open a migrated file, on a busy 2-core machine). The copy is what the hub's own ``open()``
makes of a new path (the real migrations, WAL mode, mode 0600), so tests see the same database.
Tests of the migrations and of how a new file is created open a fresh path instead
(``from_template=False`` in `running_hub`, tests/hub/store/test_sqlite*.py).
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from inferclub.hub.store import SQLiteStore


def copy_migrated_database(path: Path) -> None:
    """Make ``path`` a migrated, empty database unless it exists already (a test reopening
    its hub's database keeps what is in it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # 0600 and exclusive, as SQLiteStore.open creates a new database file.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as out, open(_template(), "rb") as src:
        shutil.copyfileobj(src, out)


@functools.cache
def _template() -> Path:
    """The migrated database of this process (each pytest-xdist worker makes its own), in a
    directory removed when the process exits."""
    folder = Path(tempfile.mkdtemp(prefix="inferclub-test-template-"))
    atexit.register(shutil.rmtree, folder, True)
    path = folder / "migrated.db"
    # In a thread of its own: callers may be inside a running event loop (`running_hub`).
    with ThreadPoolExecutor(1, "sqlite-template") as pool:
        pool.submit(asyncio.run, _migrate(path)).result()
    # Closing the store checkpoints the WAL into the file: the file alone is the database.
    assert path.exists() and not path.with_name(path.name + "-wal").exists(), path
    return path


async def _migrate(path: Path) -> None:
    store = SQLiteStore(path)
    await store.open()
    await store.close()
