"""The store's behaviour, the same on every backend: each test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import pytest

from inferclub.hub.store import AlreadyExists, RequestFilter, RequestRecord, ServiceInfo, Store
from tests.support.stores import Backend


def run(coro: Awaitable[None]) -> None:
    async def main() -> None:
        await coro

    asyncio.run(main())


def test_reopening_keeps_data_and_applies_nothing_twice(backend: Backend) -> None:
    async def go() -> None:
        store = await backend.open()
        await store.create_user("alice")
        await store.close()
        store = await backend.open()
        assert [u.login for u in await store.list_users()] == ["alice"]
        await store.close()

    run(go())


def test_users_keys_and_versions(backend: Backend) -> None:
    async def go() -> None:
        store = await backend.open()
        user = await store.create_user("alice")
        with pytest.raises(AlreadyExists):
            await store.create_user("alice")
        v0 = await store.keys_version()
        key = await store.create_key(user.id, "laptop", "ic_abcdefgh", "h1")
        assert await store.keys_version() == v0 + 1
        owner = await store.find_active_key("h1")
        assert owner is not None and (owner.user_id, owner.login) == (user.id, "alice")
        new = await store.rotate_key(user.id, key.id, "ic_ijklmnop", "h2")
        assert new is not None and new.name == "laptop"
        assert await store.find_active_key("h1") is None
        assert await store.find_active_key("h2") is not None
        assert await store.keys_version() == v0 + 3
        assert await store.rotate_key(user.id, key.id, "ic_qrstuvwx", "h3") is None, "revoked"
        assert not await store.revoke_key(new.id, user_id=user.id + 1), "another user's key"
        assert await store.revoke_key(new.id, user_id=user.id)
        assert not await store.revoke_key(new.id), "already revoked"
        assert await store.keys_version() == v0 + 4
        assert [k.active for k in await store.list_keys(user.id)] == [False, False]
        await store.close()

    run(go())


def test_keys_by_prefix_id_and_owner(backend: Backend) -> None:
    async def go() -> None:
        store = await backend.open()
        alice = await store.create_user("alice")
        bob = await store.create_user("bob")
        a1 = await store.create_key(alice.id, "one", "ic_aaaaaaaa", "h1")
        a2 = await store.create_key(alice.id, "two", "ic_aaaaaaaa", "h2")
        assert [k.id for k in await store.find_keys("ic_aaaaaaaa")] == [a1.id, a2.id]
        assert [k.name for k in await store.find_keys(str(a2.id))] == ["two"]
        assert await store.find_keys("ic_nothing") == []
        assert await store.get_key(alice.id, a1.id) == a1
        assert await store.get_key(bob.id, a1.id) is None, "another user's key"
        await store.touch_keys({a1.id: 1000.0})
        await store.touch_keys({})
        got = await store.get_key(alice.id, a1.id)
        assert got is not None and got.last_used_at == 1000.0
        assert await store.get_user_by_id(bob.id) == bob
        assert await store.get_user("carol") is None
        assert await store.count_users() == 2
        await store.close()

    run(go())


def test_github_users_keyed_by_numeric_id(backend: Backend) -> None:
    async def go() -> None:
        store = await backend.open()
        a = await store.upsert_github_user(42, "octo")
        b = await store.upsert_github_user(42, "octo-renamed")
        assert a.id == b.id and (await store.get_user("octo-renamed")) is not None
        c = await store.upsert_github_user(43, "octo")
        assert c.id != a.id
        # A GitHub account holding a login that GitHub now gives someone else steps aside.
        d = await store.upsert_github_user(44, "octo-renamed")
        assert (await store.get_user("octo-renamed")) == d
        moved = await store.get_user_by_id(a.id)
        assert moved is not None and moved.login == f"octo-renamed~{a.id}"
        # A local user never does: the store refuses rather than rename it (the accounts
        # layer keeps GitHub logins in a namespace of their own, so this never happens).
        local = await store.create_user("hubber")
        with pytest.raises(AlreadyExists):
            await store.upsert_github_user(45, "hubber")
        assert await store.get_user_by_id(local.id) == local
        assert await store.get_user("hubber") == local
        await store.close()

    run(go())


SERVICES = [
    ServiceInfo("a", "llm", "vllm", ("x",), ("m1", "m2")),
    ServiceInfo("b", "stt", "whisper", (), ("w",)),
]


def test_heartbeat_replaces_services_atomically(backend: Backend) -> None:
    async def go() -> None:
        store = await backend.open()
        user = await store.create_user("alice")
        p1 = await store.save_heartbeat(
            user.id, "rig", "http://h/v1", "1", {"up": 1}, SERVICES, 100.0
        )
        assert await store.list_providers(user.id) == [p1]
        p2 = await store.save_heartbeat(
            user.id, "rig", "http://h2/v1", "2", {}, SERVICES[:1], 200.0
        )
        assert p1.id == p2.id and p2.created_at == p1.created_at
        # A failing write (duplicate service name violates UNIQUE) leaves the old state whole.
        dup = [
            ServiceInfo("a", "llm", "vllm", (), ("z",)),
            ServiceInfo("a", "llm", "vllm", (), ("y",)),
        ]
        with pytest.raises(backend.integrity_error):
            await store.save_heartbeat(user.id, "rig", "http://h3/v1", "3", {}, dup, 300.0)
        [p] = await store.list_providers(user.id)
        assert (p.callback_url, p.last_heartbeat_at) == ("http://h2/v1", 200.0)
        assert p.services == (ServiceInfo("a", "llm", "vllm", ("x",), ("m1", "m2")),)
        await store.close()

    run(go())


def test_a_provider_records_its_transport(backend: Backend) -> None:
    async def go() -> None:
        store = await backend.open()
        user = await store.create_user("alice")
        first = await store.save_heartbeat(user.id, "rig", "http://h/v1", "1", {}, SERVICES, 1.0)
        assert first.transport == "callback"
        tunnelled = await store.save_heartbeat(
            user.id, "rig", "http://h/v1", "1", {}, SERVICES, 2.0, transport="tunnel"
        )
        assert tunnelled.transport == "tunnel"
        assert await store.list_providers(user.id) == [tunnelled]
        await store.close()

    run(go())


def test_providers_in_routing_order_and_per_user(backend: Backend) -> None:
    async def go() -> None:
        store = await backend.open()
        alice = await store.create_user("alice")
        bob = await store.create_user("bob")
        health = {"ok": True, "gpu": {"util": 0.5}}
        a1 = await store.save_heartbeat(alice.id, "z-rig", "http://a/v1", "1", health, [], 1.0)
        b1 = await store.save_heartbeat(bob.id, "rig", "http://b/v1", "1", {}, SERVICES, 2.0)
        a2 = await store.save_heartbeat(alice.id, "a-rig", "http://c/v1", "1", {}, SERVICES, 3.0)
        assert await store.list_providers() == [a1, b1, a2]
        assert await store.list_providers(alice.id) == [a1, a2]
        assert await store.get_provider(alice.id, a1.id) == a1
        assert await store.get_provider(bob.id, a1.id) is None, "another user's provider"
        assert not await store.delete_provider(bob.id, a1.id), "another user's provider"
        assert await store.delete_provider(alice.id, a1.id)
        assert not await store.delete_provider(alice.id, a1.id)
        assert await store.list_providers(alice.id) == [a2]
        await store.close()

    run(go())


def test_ids_are_not_reused_after_a_delete(backend: Backend) -> None:
    async def go() -> None:
        store = await backend.open()
        user = await store.create_user("alice")
        first = await store.save_heartbeat(user.id, "one", "http://h/v1", "", {}, SERVICES, 1.0)
        last = await store.save_heartbeat(user.id, "two", "http://h/v1", "", {}, SERVICES, 1.0)
        assert await store.delete_provider(user.id, last.id)
        again = await store.save_heartbeat(user.id, "two", "http://h/v1", "", {}, SERVICES, 2.0)
        await store.close()
        assert first.id < last.id < again.id

    run(go())


def _history(user_id: int) -> list[RequestRecord]:
    return [
        RequestRecord(
            "r1", user_id, "/v1/chat/completions", 100.0, 200, model="m", type="llm",
            ttfb_ms=10.0, duration_ms=100.0, prompt_tokens=1, completion_tokens=2,
        ),
        RequestRecord(
            "r2", user_id, "/v1/chat/completions", 110.0, 502, model="m", type="llm",
            error_type="upstream_error", duration_ms=300.0, cancelled=True,
        ),
        RequestRecord(
            "r3", user_id, "/v1/audio/transcriptions", 170.0, 200, model="w", type="stt",
            ttfb_ms=30.0, duration_ms=50.0, audio_seconds=2.5, bytes_in=1000, bytes_out=20,
        ),
        RequestRecord("r4", user_id, "/v1/models", 170.0, 200),
    ]  # fmt: skip


def test_request_history_filters_pages_and_buckets(backend: Backend) -> None:
    async def go() -> None:
        store = await backend.open()
        user = await store.create_user("alice")
        other = await store.create_user("bob")
        rows = _history(user.id)
        await store.add_requests(rows)
        await store.add_requests([rows[0]])  # a retried batch: no duplicate, no error
        await store.add_requests([RequestRecord("x1", other.id, "/v1/models", 100.0, 200)])
        await store.add_requests([])

        newest_first = await store.list_requests(user.id)
        assert [r.id for r in newest_first] == ["r4", "r3", "r2", "r1"], "ties by id"
        assert newest_first[1] == rows[2] and newest_first[2] == rows[1]
        assert [r.id for r in await store.list_requests(user.id, limit=2, offset=1)] == [
            "r3",
            "r2",
        ]
        assert await store.count_requests(user.id) == 4
        for flt, expected in [
            (RequestFilter(model="m"), ["r2", "r1"]),
            (RequestFilter(type="stt"), ["r3"]),
            (RequestFilter(status=502), ["r2"]),
            (RequestFilter(since=110.0), ["r4", "r3", "r2"]),
            (RequestFilter(until=110.0), ["r1"]),
            (RequestFilter(model="m", since=105.0, until=200.0), ["r2"]),
        ]:
            assert [r.id for r in await store.list_requests(user.id, flt)] == expected, flt
            assert await store.count_requests(user.id, flt) == len(expected), flt
        assert await store.get_request(user.id, "r3") == rows[2]
        assert await store.get_request(other.id, "r3") is None, "another user's request"

        buckets = await store.request_buckets(user.id, None, 60.0)
        assert [(b.start, b.requests, b.errors) for b in buckets] == [(60.0, 2, 1), (120.0, 2, 0)]
        assert (buckets[0].avg_ttfb_ms, buckets[0].avg_duration_ms) == (10.0, 200.0)
        assert (buckets[0].prompt_tokens, buckets[0].completion_tokens) == (1, 2)
        assert (buckets[1].avg_ttfb_ms, buckets[1].prompt_tokens) == (30.0, 0)
        [only] = await store.request_buckets(user.id, RequestFilter(type="stt"), 3600.0)
        assert (only.start, only.requests, only.avg_duration_ms) == (0.0, 1, 50.0)
        await store.close()

    run(go())


def test_any_text_a_client_or_agent_sends_is_stored(backend: Backend) -> None:
    async def go() -> None:
        store = await backend.open()
        user = await store.create_user("alice")
        # A model name is whatever the client asked for; a health report may quote an
        # engine's error. Neither may make a write fail (a failed history batch is retried
        # whole, forever; a failed heartbeat takes the provider offline).
        odd = "m\x00\ud800x"
        big = 2**40
        await store.add_requests(
            [
                RequestRecord("r1", user.id, "/v1/x", 1.0, 200, model=odd, prompt_tokens=big),
                RequestRecord("r2", user.id, "/v1/x", 2.0, 200, prompt_tokens=big),
                # Every text column, and a bool, which each backend stores its own way.
                RequestRecord(
                    "r3",
                    user.id,
                    "/v1/x" + odd,
                    3.0,
                    502,
                    service=odd,
                    type=odd,
                    model="fine",
                    error_type=odd,
                    error_code=odd,
                    served_model=odd,
                    cancelled=True,
                ),
            ]
        )
        got = await store.get_request(user.id, "r1")
        assert got is not None and got.model == "m\ufffd\ufffdx" and got.prompt_tokens == big
        assert got.cancelled is False
        every = await store.get_request(user.id, "r3")
        assert every is not None and every.cancelled is True and every.model == "fine"
        texts = (every.service, every.type, every.error_type, every.error_code, every.served_model)
        assert set(texts) == {"m\ufffd\ufffdx"} and every.endpoint == "/v1/xm\ufffd\ufffdx"
        [bucket] = await store.request_buckets(user.id, None, 60.0)
        assert bucket.prompt_tokens == 2 * big
        health = {"error": "engine said \x00 and \ud800", "n": [1, 2.5, None, True]}
        saved = await store.save_heartbeat(user.id, "rig", "http://h/v1", "", health, [], 1.0)
        assert (await store.list_providers(user.id))[0].health == health == saved.health
        await store.close()

    run(go())


def test_auth_tokens_work_once_and_expire(backend: Backend) -> None:
    async def go() -> None:
        store = await backend.open()
        user = await store.create_user("alice")
        now = time.time()
        await store.create_auth_token("login_link", "h1", user.id, now + 60)
        await store.create_auth_token("session", "h2", user.id, now + 60, data="d")
        await store.create_auth_token("oauth_state", "h3", None, now + 60)
        assert await store.get_auth_token("session", "h1", now) is None, "kinds do not mix"
        first = await store.consume_auth_token("login_link", "h1", now)
        assert first is not None and (first.user_id, first.kind) == (user.id, "login_link")
        assert await store.consume_auth_token("login_link", "h1", now) is None
        session = await store.get_auth_token("session", "h2", now)
        assert session is not None and session.data == "d"
        assert await store.get_auth_token("session", "h2", now + 61) is None
        state = await store.consume_auth_token("oauth_state", "h3", now + 61)
        assert state is None, "expired, and gone"
        assert await store.delete_auth_token("session", "h2")
        assert not await store.delete_auth_token("session", "h2")
        await store.close()

    run(go())


def test_two_stores_writing_at_once(backend: Backend) -> None:
    async def go() -> None:
        a = await backend.open()
        b = await backend.open()
        user = await a.create_user("alice")

        async def writes(store: Store, tag: str) -> None:
            for i in range(100):
                await store.add_requests(
                    [RequestRecord(f"{tag}{i}", user.id, "/v1/x", float(i), 200)]
                )
                await store.save_heartbeat(user.id, tag, "http://h/v1", "", {}, [], float(i))

        await asyncio.gather(writes(a, "a"), writes(b, "b"))
        assert await a.count_requests(user.id) == 200
        assert await b.count_requests(user.id, RequestFilter(since=50.0)) == 100
        page = await a.list_requests(user.id, limit=3)
        assert [r.started_at for r in page] == [99.0, 99.0, 98.0]
        await a.close()
        await b.close()

    run(go())


def test_a_writer_cancelled_mid_transaction_leaves_the_store_usable(backend: Backend) -> None:
    async def go() -> None:
        store = await backend.open()
        try:
            user = await store.create_user("alice")
            for step in range(6):
                # Cancel at each point of a write: before BEGIN ran, inside, around COMMIT.
                task = asyncio.create_task(
                    store.add_requests([RequestRecord(f"r{step}", user.id, "/v1/x", 1.0, 200)])
                )
                for _ in range(step):
                    await asyncio.sleep(0)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await store.create_user(f"u{step}")  # the next write works
            assert await store.count_requests(user.id) <= 6
        finally:
            await store.close()  # or a connection thread keeps the test process alive

    run(go())


def test_fallback_models(backend: Backend) -> None:
    async def go() -> None:
        store = await backend.open()
        alice, bob = await store.create_user("alice"), await store.create_user("bob")
        await store.set_fallback(alice.id, "qwen3-32b", "qwen3-8b", 1.0)
        await store.set_fallback(alice.id, "qwen3-32b", "qwen3-4b", 2.0)  # replaced
        await store.set_fallback(alice.id, "big", "small", 3.0)
        await store.set_fallback(bob.id, "big", "tiny", 4.0)
        mine = [(f.model, f.fallback) for f in await store.list_fallbacks(alice.id)]
        assert mine == [("big", "small"), ("qwen3-32b", "qwen3-4b")]
        assert len(await store.list_fallbacks()) == 3
        assert await store.delete_fallback(alice.id, "big")
        assert not await store.delete_fallback(alice.id, "big")
        assert [(f.user_id, f.fallback) for f in await store.list_fallbacks()] == [
            (alice.id, "qwen3-4b"),
            (bob.id, "tiny"),
        ]
        await store.close()

    run(go())
