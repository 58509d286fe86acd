"""The ``db`` setting picks the backend: a ``postgresql://`` URL or a SQLite path."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from inferclub.hub.config import load_settings
from inferclub.hub.store import PostgresStore, SQLiteStore, StoreError, describe_db, open_store

URL = "postgresql://hub:s3cret@db.example:5432/inferclub"


def test_a_url_selects_postgresql_and_anything_else_sqlite(tmp_path: Path) -> None:
    for url in (URL, "postgres://hub@db.example/inferclub"):
        store = open_store(url)
        assert isinstance(store, PostgresStore) and store.dsn == url
    store = open_store(str(tmp_path / "h.db"))
    assert isinstance(store, SQLiteStore) and store.path == tmp_path / "h.db"


def test_the_setting_keeps_the_url_whole_and_secrets_out_of_the_cwd(tmp_path: Path) -> None:
    settings = load_settings({}, env={"INFERCLUB_DB": URL})
    assert settings.db_url == URL
    assert settings.secrets_path.is_absolute() and "db.example" not in str(settings.secrets_path)
    on_disk = load_settings({"db": str(tmp_path / "h.db")}, env={})
    assert on_disk.db_url == str(tmp_path / "h.db")
    assert on_disk.secrets_path == tmp_path / "h.db.secrets.json"


def test_passwords_never_reach_logs_or_errors() -> None:
    assert describe_db(URL) == "postgresql://hub:***@db.example:5432/inferclub"
    assert "s3cret" not in describe_db(
        "postgresql://hub@db.example/x?password=s3cret&sslmode=require"
    )
    assert describe_db("/var/lib/inferclub/h.db") == "/var/lib/inferclub/h.db"

    async def go() -> None:
        # Port 1: nothing listens there, so the connection is refused at once.
        with pytest.raises(StoreError) as info:
            await PostgresStore("postgresql://hub:s3cret@127.0.0.1:1/inferclub").open()
        assert "s3cret" not in str(info.value) and "hub:***@127.0.0.1:1" in str(info.value)

    asyncio.run(go())
