"""The dashboard's history queries and retention's deletes use indexes (SQLite's query plan;
PostgreSQL has the same indexes from its own migration, 0004)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from inferclub.hub.store import SQLiteStore
from inferclub.hub.store.base import RequestFilter
from inferclub.hub.store.sqlite import _request_where


def _plan(db: Path, sql: str, args: tuple[object, ...]) -> str:
    with sqlite3.connect(db) as conn:
        return " ".join(str(r[-1]) for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args))


def test_history_queries_use_indexes(tmp_path: Path) -> None:
    async def create() -> None:
        store = SQLiteStore(tmp_path / "h.db")
        await store.open()
        await store.close()

    asyncio.run(create())
    db = tmp_path / "h.db"
    where, args = _request_where(1, RequestFilter(model="m1"))
    page = f"SELECT * FROM requests {where} ORDER BY started_at DESC, id DESC LIMIT 50"
    assert "INDEX requests_user_model_time" in _plan(db, page, args)
    where, args = _request_where(1, RequestFilter(since=0.0))
    assert "INDEX requests_user_time" in _plan(db, f"SELECT count(*) FROM requests {where}", args)
    prune = "SELECT rowid FROM requests WHERE started_at < ? ORDER BY started_at LIMIT 10"
    assert "INDEX requests_time" in _plan(db, prune, (0.0,))
