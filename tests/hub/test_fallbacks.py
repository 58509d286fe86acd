"""Fallback models through the real hub in-process: a request for a model no provider can
serve now goes to the user's fallback, and the client and the history are told."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import openai
import pytest

from inferclub.hub.fallbacks import MAX_FALLBACKS, FallbackError
from tests.support.fakes.agent import FakeAgent
from tests.support.hubapp import request_id_of, running_hub, wait_until


def chat(model: str) -> list[dict[str, object]]:
    return [{"name": "chat", "type": "llm", "engine": "vllm", "features": [], "models": [model]}]


async def test_a_fallback_serves_while_the_models_only_provider_is_offline(
    tmp_path: Path,
) -> None:
    async with running_hub(tmp_path, online_window=2) as hub:
        key = await hub.user_with_key("alice")
        user = (await hub.hub.store.get_user("alice")).id  # type: ignore[union-attr]
        with FakeAgent(["big"]) as big, FakeAgent(["small"]) as small:
            await hub.heartbeat(key, "gpu-box", big.url, chat("big"))
            await hub.heartbeat(key, "laptop", small.url, chat("small"))
            await hub.hub.fallbacks.set(user, "big", "small")
            sdk = hub.client(key)
            raw = await sdk.chat.completions.with_raw_response.create(model="big", messages=[])
            assert raw.headers["X-InferClub-Served-Model"] == "big"  # big is online: itself
            # Both go offline; only the laptop beats again. (A window of 2 s, not 1: on a loaded
            # machine the laptop's own beat aged past 1 s before the request reached the hub.)
            await asyncio.sleep(2.1)
            await hub.heartbeat(key, "laptop", small.url, chat("small"))
            raw = await sdk.chat.completions.with_raw_response.create(model="big", messages=[])
            assert raw.headers["X-InferClub-Served-Model"] == "small"
            assert raw.headers["X-InferClub-Provider"] == "laptop"
            assert raw.parse().model == "small"
            assert small.posts("/v1/chat/completions")[-1].json()["model"] == "small"
            rid = raw.headers["X-Request-Id"]
            assert await wait_until(lambda: hub.query("SELECT 1 FROM requests WHERE id = ?", rid))
            (row,) = hub.query("SELECT model, served_model FROM requests WHERE id = ?", rid)
            assert (row["model"], row["served_model"]) == ("big", "small")
            # Without a fallback (or when it cannot serve either) the client hears of its model.
            await hub.hub.fallbacks.delete(user, "big")
            with pytest.raises(openai.InternalServerError) as exc:
                await sdk.chat.completions.create(model="big", messages=[])
            assert request_id_of(exc.value)
            assert exc.value.code == "model_unavailable" and "`big`" in exc.value.message


async def test_fallback_rules(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub:
        await hub.create_user("alice")
        user = (await hub.hub.store.get_user("alice")).id  # type: ignore[union-attr]
        fallbacks = hub.hub.fallbacks
        for model, fallback in [("m", "m"), ("", "x"), ("m", "x" * 300), ("m\x01", "x")]:
            with pytest.raises(FallbackError):
                await fallbacks.set(user, model, fallback)
        # All rules but the last straight into the database, in one transaction instead of
        # 255 round trips; the hub loads them as it loads another hub's. The last one goes
        # through the hub: the limit lets it in, and nothing after it.
        db = sqlite3.connect(hub.db)
        with db:
            rows = [(user, f"m{i}") for i in range(MAX_FALLBACKS - 1)]
            db.executemany("INSERT INTO model_fallbacks VALUES (?, ?, 'x', 0)", rows)
        db.close()
        await fallbacks.load()
        await fallbacks.set(user, f"m{MAX_FALLBACKS - 1}", "x")
        await fallbacks.set(user, "m0", "y")  # replacing one is not one more
        with pytest.raises(FallbackError, match="at most"):
            await fallbacks.set(user, "one-more", "x")
        assert fallbacks.of(user, "m0") == "y" and len(fallbacks.listed(user)) == MAX_FALLBACKS


async def test_a_reload_never_undoes_a_change_made_while_it_read(tmp_path: Path) -> None:
    """The hub reloads fallbacks every ``registry_refresh`` (another hub's changes); a rule set
    here while that reload was reading the store was lost until the next reload."""
    async with running_hub(tmp_path) as hub:
        await hub.create_user("alice")
        user = (await hub.hub.store.get_user("alice")).id  # type: ignore[union-attr]
        fallbacks, store = hub.hub.fallbacks, hub.hub.store
        read, go_on = asyncio.Event(), asyncio.Event()
        real_list = store.list_fallbacks

        async def slow_list(*args: Any) -> Any:
            found = await real_list(*args)
            if not args:  # the reload's read of every user's rules
                read.set()
                await go_on.wait()
            return found

        store.list_fallbacks = slow_list  # type: ignore[method-assign]
        reload = asyncio.ensure_future(fallbacks.load())
        await read.wait()  # the reload has read the store: no rule yet
        await fallbacks.set(user, "big", "small")
        go_on.set()
        await reload
        assert fallbacks.of(user, "big") == "small"
        store.list_fallbacks = real_list  # type: ignore[method-assign]
        await fallbacks.load()  # the next reload reads it from the store
        assert fallbacks.listed(user) == [("big", "small")]
