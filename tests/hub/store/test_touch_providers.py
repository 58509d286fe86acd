"""Last-seen batches on every backend: one call stamps many providers, never moves a stamp
back, and skips providers deleted meanwhile."""

from __future__ import annotations

import asyncio

from inferclub.hub.store import ServiceInfo
from tests.support.stores import Backend

LLM = (ServiceInfo("chat", "llm", "vllm", (), ("m1",)),)


def test_last_seen_batches(backend: Backend) -> None:
    async def go() -> None:
        store = await backend.open()
        user = await store.create_user("alice")
        one = await store.save_heartbeat(user.id, "one", "http://h1/v1", "1", {}, LLM, 100.0)
        two = await store.save_heartbeat(user.id, "two", "http://h2/v1", "1", {}, LLM, 100.0)
        await store.touch_providers(
            {one.id: (150.0, {"load": [1.0]}), two.id: (90.0, {"old": True}), 999: (150.0, {})}
        )
        got = {p.name: p for p in await store.list_providers(user.id)}
        assert (got["one"].last_heartbeat_at, got["one"].health) == (150.0, {"load": [1.0]})
        assert (got["two"].last_heartbeat_at, got["two"].health) == (100.0, {})
        assert got["one"].services == LLM
        await store.touch_providers({})
        await store.close()

    asyncio.run(go())
