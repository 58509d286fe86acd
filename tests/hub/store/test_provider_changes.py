"""What a hub asks the store to follow the others: the description version moves with every
stored description and deletion (not with last-seen batches), and only providers heard from
after the time asked about are listed."""

from __future__ import annotations

import asyncio
import json

from inferclub.hub.store import ServiceInfo
from tests.support.stores import Backend

LLM = (ServiceInfo("chat", "llm", "vllm", (), ("m1",)),)


def test_provider_changes_follow_descriptions_and_last_seen(backend: Backend) -> None:
    async def go() -> None:
        store = await backend.open()
        user = await store.create_user("alice")
        v0 = (await store.provider_changes(0.0)).version
        one = await store.save_heartbeat(user.id, "one", "http://h1/v1", "1", {}, LLM, 100.0)
        two = await store.save_heartbeat(user.id, "two", "http://h2/v1", "1", {}, LLM, 100.0)
        v2 = (await store.provider_changes(0.0)).version
        assert v2 == v0 + 2

        before = await store.provider_changes(120.0)
        await store.touch_providers({two.id: (150.0, {"load": 1})})
        changes = await store.provider_changes(120.0, before)
        assert changes.version == v2, "a last-seen batch is not a description change"
        assert changes.seen_version > before.seen_version
        assert [
            (s.id, s.user_id, s.last_heartbeat_at, json.loads(s.health_json)) for s in changes.seen
        ] == [(two.id, user.id, 150.0, {"load": 1})]
        assert [s.id for s in (await store.provider_changes(0.0)).seen] == [one.id, two.id]
        # Nothing written since the previous answer: the providers are not looked at.
        assert (await store.provider_changes(0.0, changes)).seen == []

        assert [p.name for p in await store.get_providers([two.id, 999, one.id])] == [
            "one",
            "two",
        ]
        assert (await store.get_providers([two.id]))[0].services == LLM
        assert await store.get_providers([]) == []
        assert await store.provider_ids() == {one.id, two.id}

        assert await store.delete_provider(user.id, one.id)
        assert (await store.provider_changes(0.0)).version == v2 + 1
        assert not await store.delete_provider(user.id, one.id)
        assert (await store.provider_changes(0.0)).version == v2 + 1
        assert await store.provider_ids() == {two.id}
        await store.close()

    asyncio.run(go())
