"""History and last-seen batches are a few multi-row statements, not one statement per row: each
takes the GIL back once, and with the hub's event loop busy each take waits up to the
interpreter's switch interval (5 ms), so a statement per row made a 1,000-row batch take about
half a second and the writer fell behind at ~1,000 requests/s (bench/chat_load.py history)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferclub.hub.store import RequestRecord, ServiceInfo, SQLiteStore
from inferclub.hub.store import sqlite as sqlite_store


async def test_a_history_batch_is_written_in_a_few_statements(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "h.db")
    await store.open()
    try:
        user = await store.create_user("alice")
        rows = [
            RequestRecord(f"req_{i}", user.id, "/v1/chat/completions", float(i), 200)
            for i in range(3000)
        ]
        statements: list[str] = []
        assert store._db is not None
        await store._db.set_trace_callback(statements.append)
        await store.add_requests(rows)
        await store._db.set_trace_callback(None)
        inserts = [s for s in statements if s.lstrip().upper().startswith("INSERT")]
        assert 1 <= len(inserts) <= 3, len(inserts)
        assert await store.count_requests(user.id) == 3000
        # Written twice (a retried batch), nothing is duplicated.
        await store.add_requests(rows[:10])
        assert await store.count_requests(user.id) == 3000
    finally:
        await store.close()


async def test_a_last_seen_batch_is_written_in_a_few_statements(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "h.db")
    await store.open()
    try:
        user = await store.create_user("alice")
        llm = (ServiceInfo("chat", "llm", "vllm", (), ("m1",)),)
        ids = [
            (await store.save_heartbeat(user.id, f"rig{i}", "http://h/v1", "1", {}, llm, 1.0)).id
            for i in range(300)
        ]
        statements: list[str] = []
        assert store._db is not None
        await store._db.set_trace_callback(statements.append)
        await store.touch_providers({pid: (2.0, {"n": pid}) for pid in ids})
        await store._db.set_trace_callback(None)
        updates = [s for s in statements if "UPDATE providers" in s]
        assert len(updates) == 1, len(updates)
        got = {p.id: p for p in await store.list_providers(user.id)}
        assert all(
            (got[pid].last_heartbeat_at, got[pid].health) == (2.0, {"n": pid}) for pid in ids
        )
    finally:
        await store.close()


async def test_last_seen_without_update_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite before 3.33 has no UPDATE ... FROM: one statement per provider, same result."""
    monkeypatch.setattr(sqlite_store, "_UPDATE_FROM", False)
    store = SQLiteStore(tmp_path / "h.db")
    await store.open()
    try:
        user = await store.create_user("alice")
        llm = (ServiceInfo("chat", "llm", "vllm", (), ("m1",)),)
        one = await store.save_heartbeat(user.id, "one", "http://h/v1", "1", {}, llm, 5.0)
        await store.touch_providers({one.id: (7.0, {"a": 1})})
        await store.touch_providers({one.id: (6.0, {"b": 2})})  # older: never moves back
        (got,) = await store.list_providers(user.id)
        assert (got.last_heartbeat_at, got.health) == (7.0, {"a": 1})
    finally:
        await store.close()
