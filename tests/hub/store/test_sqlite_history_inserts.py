"""A history batch is a few multi-row INSERTs, not one statement per row: each statement
takes the GIL back once, and with the hub's event loop busy each take waits up to the
interpreter's switch interval (5 ms), so a statement per row made a 1,000-row batch take about
half a second and the writer fell behind at ~1,000 requests/s (bench/chat_load.py history)."""

from __future__ import annotations

from pathlib import Path

from inferclub.hub.store import RequestRecord, SQLiteStore


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
