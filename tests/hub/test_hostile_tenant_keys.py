"""A hostile tenant with one of the user's keys: issue 9's "any key can re-point its user's
providers", reproduced against the in-process hub and shown refused.

A key handed to a client app used to be able to heartbeat the name of the user's rig with its
own URL and receive that user's prompts. Now a key has a scope (an `inference` key cannot
heartbeat, an `agent` key cannot infer) and a provider name belongs to the key that registered
it until that key is revoked. Each test asserts what the attacker sees and that nothing was
stored and no prompt reached the attacker's URL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from inferclub.hub import keys
from tests.support.fakes.agent import LLM, FakeAgent
from tests.support.hubapp import HubApp

CHAT = {"model": "m1", "messages": [{"role": "user", "content": "my secret prompt"}]}


@pytest.fixture
def attacker() -> Iterator[FakeAgent]:
    """The URL the holder of a second key wants the user's prompts sent to."""
    with FakeAgent(["m1"]) as agent:
        yield agent


def providers(app: HubApp) -> list[tuple[str, str]]:
    return [
        (r["name"], r["callback_url"])
        for r in app.query("SELECT name, callback_url FROM providers ORDER BY id")
    ]


def prompts(agent: FakeAgent) -> int:
    """Chat requests the agent received (the hub's reachability check is a GET of models)."""
    return len(agent.posts("/v1/chat/completions"))


async def chat(app: HubApp, key: str) -> str:
    done = await app.client(key).chat.completions.create(**CHAT)  # type: ignore[call-overload]
    return str(done.choices[0].message.content)


async def test_an_inference_key_cannot_heartbeat_and_nothing_is_stored(
    hub_app: HubApp, fake_agent: FakeAgent
) -> None:
    await hub_app.create_user("alice")
    key = await hub_app.create_key("alice", "phone app", scope=keys.INFERENCE)
    status, body = await hub_app.heartbeat(key, "rig", fake_agent.url, LLM)
    assert status == 403, body
    assert body["error"]["code"] == "insufficient_scope"
    assert body["error"]["type"] == "permission_error"
    assert "`inference`" in body["error"]["message"]
    assert providers(hub_app) == []
    assert fake_agent.requests == []


async def test_an_agent_key_cannot_infer_and_nothing_reaches_the_agent(
    hub_app: HubApp, fake_agent: FakeAgent
) -> None:
    await hub_app.create_user("alice")
    agent_key = await hub_app.create_key("alice", "rig", scope=keys.AGENT)
    app_key = await hub_app.create_key("alice", "phone app", scope=keys.INFERENCE)
    status, body = await hub_app.heartbeat(agent_key, "rig", fake_agent.url, LLM)
    assert status == 200, body

    client = hub_app.client(agent_key)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert denied.value.code == "insufficient_scope"
    assert denied.value.response.headers["X-Request-Id"].startswith("req_")
    with pytest.raises(openai.PermissionDeniedError):
        await client.models.list()
    assert prompts(fake_agent) == 0

    # The keys of the right scopes do their jobs.
    assert await chat(hub_app, app_key)
    assert prompts(fake_agent) == 1


async def test_a_second_key_cannot_re_point_the_users_provider(
    hub_app: HubApp, alice: str, fake_agent: FakeAgent, attacker: FakeAgent
) -> None:
    # `alice` registered `rig` (at fake_agent) with her first key; another key of hers leaks.
    leaked = await hub_app.create_key("alice", "phone app")
    for url in (attacker.url, fake_agent.url):  # a new URL, and the rig's own
        status, body = await hub_app.heartbeat(leaked, "rig", url, LLM)
        assert status == 409, body
        assert body["error"]["code"] == "provider_name_taken"
        assert body["error"]["param"] == "name"
    assert providers(hub_app) == [("rig", fake_agent.url)]

    assert await chat(hub_app, leaked)
    assert await chat(hub_app, alice)
    assert prompts(fake_agent) == 2
    assert attacker.requests == [], "nothing reached the second URL"
    # The rightful key still heartbeats as before.
    status, body = await hub_app.heartbeat(alice, "rig", fake_agent.url, LLM)
    assert status == 200, body


async def test_a_failing_store_never_hands_the_name_to_another_key(
    hub_app: HubApp,
    alice: str,
    fake_agent: FakeAgent,
    attacker: FakeAgent,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The hub keeps a known provider going in memory while its store fails; only the store
    # can tell whether the name's key is still active, so another key is told to retry.
    leaked = await hub_app.create_key("alice", "phone app")

    async def broken(*_args: Any, **_kwargs: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(hub_app.hub.store, "save_heartbeat", broken)
    status, body = await hub_app.heartbeat(leaked, "rig", attacker.url, LLM)
    assert status == 503 and body["error"]["code"] == "store_unavailable", body
    status, body = await hub_app.heartbeat(alice, "rig", fake_agent.url, LLM)
    assert status == 200, body
    assert await chat(hub_app, leaked)
    assert prompts(fake_agent) == 1 and attacker.requests == []


async def test_once_the_first_key_is_revoked_another_key_may_take_the_name(
    hub_app: HubApp, alice: str, fake_agent: FakeAgent, attacker: FakeAgent
) -> None:
    second = await hub_app.create_key("alice", "new rig")
    status, _ = await hub_app.heartbeat(second, "rig", attacker.url, LLM)
    assert status == 409
    await hub_app.revoke_elsewhere(alice)  # the CLI, in another process

    status, body = await hub_app.heartbeat(second, "rig", attacker.url, LLM)
    assert status == 200, body
    assert providers(hub_app) == [("rig", attacker.url)]
    assert await chat(hub_app, second)
    assert prompts(attacker) == 1 and prompts(fake_agent) == 0


async def test_a_rotated_key_keeps_the_name(
    hub_app: HubApp, alice: str, fake_agent: FakeAgent, attacker: FakeAgent
) -> None:
    other = await hub_app.create_key("alice", "phone app")
    accounts = hub_app.hub.accounts
    old = await accounts.active_key(keys.display_prefix(alice))
    rotated = await accounts.rotate_key(old.user_id, old.id)
    assert rotated is not None

    status, body = await hub_app.heartbeat(rotated.secret, "rig", fake_agent.url, LLM)
    assert status == 200, body
    status, body = await hub_app.heartbeat(other, "rig", attacker.url, LLM)
    assert status == 409, body
    assert providers(hub_app) == [("rig", fake_agent.url)]
    (bound,) = hub_app.query("SELECT key_id FROM providers")
    assert bound["key_id"] == rotated.record.id


async def test_other_users_use_the_same_name_independently(
    hub_app: HubApp, alice: str, fake_agent: FakeAgent, attacker: FakeAgent
) -> None:
    bob = await hub_app.user_with_key("bob")
    status, body = await hub_app.heartbeat(bob, "rig", attacker.url, LLM)
    assert status == 200, body
    assert sorted(providers(hub_app)) == sorted([("rig", fake_agent.url), ("rig", attacker.url)])
    assert await chat(hub_app, alice)
    assert prompts(fake_agent) == 1 and prompts(attacker) == 0
