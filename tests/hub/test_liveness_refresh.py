"""Two hubs sharing one store follow each other through Liveness.refresh: last-seen times,
changed descriptions, new and deleted providers reach the other hub's routing. On both backends
(each "hub" here is a Registry and a Liveness on its own store connection)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from inferclub import wire
from inferclub.hub.liveness import Liveness
from inferclub.hub.routing import Registry
from inferclub.hub.store import Store
from inferclub.openai_errors import OpenAIError
from tests.support.stores import Backend, postgres_backend, sqlite_backend


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def shared_store_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield sqlite_backend(tmp_path)
    else:
        with postgres_backend() as found:
            yield found


@dataclass
class MiniHub:
    store: Store
    registry: Registry
    liveness: Liveness

    @classmethod
    async def open(cls, backend: Backend) -> MiniHub:
        store = await backend.open()
        registry = Registry(online_window=60.0)
        liveness = Liveness(store, registry, interval=0.05)
        await liveness.load()
        return cls(store, registry, liveness)

    def routed_model(self, user_id: int, model: str) -> str:
        try:
            return self.registry.route(user_id, "llm", model).provider.name
        except OpenAIError as exc:
            return str(exc.body()["error"]["code"])


def beat(models: list[str], version: str = "1") -> wire.Heartbeat:
    return wire.Heartbeat.parse(
        {
            "name": "rig",
            "callback_url": "http://10.0.0.1:8000/v1",
            "version": version,
            "services": [{"name": "chat", "type": "llm", "models": models}],
            "health": {"version": version},
        }
    )


def test_a_hub_follows_what_another_hub_wrote(shared_store_backend: Backend) -> None:
    async def go() -> None:
        a = await MiniHub.open(shared_store_backend)
        b = await MiniHub.open(shared_store_backend)
        user = await a.store.create_user("alice")
        try:
            await b.liveness.refresh()
            assert b.routed_model(user.id, "m1") == "model_not_found"

            # A new provider at A routes from B after one refresh.
            await a.liveness.beat(user.id, beat(["m1"]), time.time())
            await b.liveness.refresh()
            assert b.routed_model(user.id, "m1") == "rig"

            # A steady-state beat at A (written in a batch) moves B's last-seen time.
            later = time.time() + 5
            await a.liveness.beat(user.id, beat(["m1"]), later)
            await a.liveness.flush()
            await b.liveness.refresh()
            (seen,) = b.registry.providers(user.id)
            assert (seen.last_heartbeat_at, seen.health) == (later, {"version": "1"})

            # A changed description at A: B routes the new model, no longer the old one.
            await a.liveness.beat(user.id, beat(["m2"], "2"), time.time() + 6)
            await b.liveness.refresh()
            assert b.routed_model(user.id, "m2") == "rig"
            assert b.routed_model(user.id, "m1") == "model_not_found"

            # Deleted through A's store (the dashboard): gone from B too.
            assert await a.store.delete_provider(user.id, seen.id)
            await b.liveness.refresh()
            assert b.registry.providers(user.id) == []
            assert b.routed_model(user.id, "m2") == "model_not_found"
        finally:
            await a.store.close()
            await b.store.close()

    asyncio.run(go())


def test_a_refresh_never_takes_back_a_newer_local_beat(shared_store_backend: Backend) -> None:
    async def go() -> None:
        a = await MiniHub.open(shared_store_backend)
        b = await MiniHub.open(shared_store_backend)
        user = await a.store.create_user("alice")
        try:
            now = time.time()
            await a.liveness.beat(user.id, beat(["m1"]), now)
            await b.liveness.refresh()
            # B hears the agent itself, later than anything in the store.
            await b.liveness.beat(user.id, beat(["m1"]), now + 10)
            await a.liveness.beat(user.id, beat(["m1"]), now + 1)
            await a.liveness.flush()
            await b.liveness.refresh()
            (seen,) = b.registry.providers(user.id)
            assert seen.last_heartbeat_at == now + 10
        finally:
            await a.store.close()
            await b.store.close()

    asyncio.run(go())
