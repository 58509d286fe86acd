"""History export reads the store page by page (keyset paging on ``(started_at, id)``): every
row exactly once, newest first, ties on the start time included, on both backends."""

from __future__ import annotations

import asyncio

from inferclub.hub import export
from inferclub.hub.store import RequestFilter, RequestRecord
from tests.support.stores import Backend

NOW = 1_780_000_000.0


def test_export_pages_through_every_row_once(backend: Backend) -> None:
    async def go() -> None:
        store = await backend.open()
        try:
            alice = await store.create_user("alice")
            bob = await store.create_user("bob")
            # Three rows share each start time: a page boundary falls inside a tie.
            rows = [
                RequestRecord(
                    id=f"req_{i:024x}",
                    user_id=alice.id,
                    endpoint="/v1/chat/completions",
                    started_at=NOW - (i // 3),
                    status=200,
                    type="llm",
                    model="m",
                )
                for i in range(50)
            ]
            other = RequestRecord(id="req_bob", user_id=bob.id, endpoint="/v1/x", started_at=NOW)
            await store.add_requests([*rows, other])

            got = [r["id"] async for r in export.records(store, alice, page=7)]
            newest_first = sorted(rows, key=lambda r: (r.started_at, r.id), reverse=True)
            assert got == [r.id for r in newest_first]

            since = RequestFilter(since=NOW - 5)
            recent = [r["id"] async for r in export.records(store, alice, since, page=4)]
            assert len(recent) == 18  # start times NOW-5 .. NOW, three rows each
        finally:
            await store.close()

    asyncio.run(go())
