"""History retention on every backend: the oldest rows go first, at most a batch at a time, and
a round of the pruner deletes everything past retention and nothing else."""

from __future__ import annotations

import asyncio

from inferclub.hub.history import Retention
from inferclub.hub.store import RequestRecord
from tests.support.stores import Backend

DAY = 86400.0


def test_pruning_in_bounded_batches(backend: Backend) -> None:
    async def go() -> None:
        store = await backend.open()
        user = await store.create_user("alice")
        now = 100 * DAY
        old = [
            RequestRecord(f"old_{i}", user.id, "/v1/chat/completions", i, 200) for i in range(25)
        ]
        new = [
            RequestRecord(f"new_{i}", user.id, "/v1/chat/completions", now - i, 200)
            for i in range(5)
        ]
        await store.add_requests(old + new)
        assert await store.prune_requests(50.0, 10) == 10  # the 10 oldest
        assert await store.count_requests(user.id) == 20
        retention = Retention(store, days=90)
        retention.BATCH = 4
        assert await retention.prune(now) == 15
        left = await store.list_requests(user.id, limit=100)
        assert sorted(r.id for r in left) == sorted(r.id for r in new)
        await store.close()

    asyncio.run(go())
