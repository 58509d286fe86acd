"""The history writer against the real SQLite store: a row the store refuses is dropped and
counted without holding back the others; while the store fails rows wait, and once it works
again the backlog drains in bounded batches; stopping on a failing store does not raise."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

import pytest

from inferclub.hub import history
from inferclub.hub.history import HistoryWriter
from inferclub.hub.store import RequestRecord, SQLiteStore


def _rows(user_id: int, n: int, prefix: str = "req") -> list[RequestRecord]:
    return [
        RequestRecord(f"{prefix}_{i}", user_id, "/v1/chat/completions", 1000.0 + i, 200)
        for i in range(n)
    ]


async def _store(tmp_path: Path) -> tuple[SQLiteStore, int]:
    store = SQLiteStore(tmp_path / "h.db")
    await store.open()
    return store, (await store.create_user("alice")).id


def _stored(store: SQLiteStore) -> int:
    with sqlite3.connect(store.path) as db:
        return int(db.execute("SELECT count(*) FROM requests").fetchone()[0])


async def test_a_refused_row_is_dropped_and_the_others_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, uid = await _store(tmp_path)
    real = store.add_requests

    async def picky(rows: Iterable[RequestRecord]) -> None:
        rows = list(rows)
        if any(r.id == "req_7" for r in rows):
            raise sqlite3.IntegrityError("CHECK constraint failed")
        await real(rows)

    monkeypatch.setattr(store, "add_requests", picky)
    writer = HistoryWriter(store)
    for row in _rows(uid, 20):
        writer.add(row)
    assert await writer.flush()
    assert (_stored(store), writer.dropped, writer.pending) == (19, 1, 0)
    await store.close()


async def test_a_failing_store_keeps_rows_and_drains_them_in_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, uid = await _store(tmp_path)
    real = store.add_requests
    batches: list[int] = []
    broken = True

    async def disk(rows: Iterable[RequestRecord]) -> None:
        rows = list(rows)
        if broken:
            raise sqlite3.OperationalError("disk I/O error")
        batches.append(len(rows))
        await real(rows)

    monkeypatch.setattr(store, "add_requests", disk)
    monkeypatch.setattr(history, "BATCH", 100)
    writer = HistoryWriter(store)
    for row in _rows(uid, 250):
        writer.add(row)
    assert not await writer.flush()
    assert not await writer.flush()
    assert (writer.pending, writer.dropped, writer.failures.total) == (250, 0, 2)
    broken = False
    assert await writer.flush()
    assert (_stored(store), writer.pending, batches) == (250, 0, [100, 100, 50])
    await store.close()


async def test_stopping_on_a_failing_store_logs_what_was_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store, uid = await _store(tmp_path)

    async def disk(rows: Iterable[RequestRecord]) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "add_requests", disk)
    writer = HistoryWriter(store)
    await writer.start()
    for row in _rows(uid, 3):
        writer.add(row)
    await writer.stop()
    assert "could not write 3 request history rows" in caplog.text
    await store.close()
