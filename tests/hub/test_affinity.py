"""Conversation keys and the bounded table of who served them (hub/affinity.py)."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

from inferclub.hub.affinity import Affinity, conversation_key
from tests.support.fakes.agent import LLM, FakeAgent
from tests.support.hubapp import running_hub, wait_until

SYSTEM = {"role": "system", "content": "Be brief."}
FIRST = {"role": "user", "content": "What is a hub?"}
ANSWER = {"role": "assistant", "content": "A thing in the middle."}
NEXT = {"role": "user", "content": "And an agent?"}


def test_every_turn_of_one_chat_has_the_same_key_and_other_chats_another() -> None:
    first_turn = conversation_key(1, [SYSTEM, FIRST])
    assert first_turn is not None and len(first_turn) == 16
    assert conversation_key(1, [SYSTEM, FIRST, ANSWER, NEXT]) == first_turn
    assert conversation_key(1, [FIRST, ANSWER, NEXT]) == conversation_key(1, [FIRST])
    assert conversation_key(1, [FIRST]) != first_turn, "another system prompt"
    assert conversation_key(2, [SYSTEM, FIRST]) != first_turn, "another user"
    assert conversation_key(1, [SYSTEM, NEXT]) != first_turn
    # The key says nothing of the prompt: a hash, not the text.
    assert b"hub" not in first_turn


def test_no_key_without_a_user_message() -> None:
    for messages in (None, "hi", [], [SYSTEM], [1, 2]):
        assert conversation_key(1, messages) is None


def test_the_table_is_bounded_least_recently_used_out() -> None:
    table = Affinity(size=2)
    a, b, c = (conversation_key(1, [{"role": "user", "content": x}]) for x in "abc")
    table.served(a, 1, "s")
    table.served(b, 2, "s")
    assert table.preferred(a) == (1, "s")  # a is now the most recently used
    table.served(c, 3, "s")
    assert len(table) == 2
    assert table.preferred(b) is None
    assert (table.preferred(a), table.preferred(c)) == ((1, "s"), (3, "s"))
    table.served(None, 4, "s")
    assert table.preferred(None) is None and len(table) == 2


async def test_the_next_turn_of_a_chat_goes_where_the_last_one_was_served(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub:
        key = await hub.user_with_key("alice")
        with FakeAgent(["m1"]) as first, FakeAgent(["m1"]) as second:
            await hub.heartbeat(key, "rig-1", first.url, LLM)
            await hub.heartbeat(key, "rig-2", second.url, LLM)
            client = hub.client(key)

            async def turn(*messages: dict[str, str]) -> str:
                raw = await client.chat.completions.with_raw_response.create(
                    model="m1",
                    messages=list(messages),  # type: ignore[arg-type]
                )
                return raw.headers["X-InferClub-Provider"]

            async def hold() -> None:
                stream = await client.chat.completions.create(
                    model="m1", messages=[NEXT], stream=True
                )
                async for _ in stream:
                    pass

            # rig-1 is busy with a stream while the chat begins: rig-2 has more room.
            first.stall_after = 1
            held = asyncio.ensure_future(hold())
            assert await wait_until(lambda: len(first.posts("/v1/chat/completions")) == 1)
            assert await turn(SYSTEM, FIRST) == "rig-2"
            held.cancel()
            assert await wait_until(lambda: hub.hub.inflight == 0)
            # Both equally free now: the chat goes back to rig-2, a new one to rig-1.
            assert await turn(SYSTEM, FIRST, ANSWER, NEXT) == "rig-2"
            assert await turn(SYSTEM, NEXT) == "rig-1"


async def test_a_chats_messages_are_let_go_once_its_service_is_chosen(tmp_path: Path) -> None:
    """The hub keeps no decoded copy of a chat's messages while its answer runs: they weigh
    several times the body (chats of 8.6 MiB, many short messages, held at a tenant's own slow
    agent: 93 MiB of the hub each when the unhashed conversation kept them, 24 MiB before)."""
    marker = "the messages of a chat that streams on"
    async with running_hub(tmp_path) as hub:
        key = await hub.user_with_key("alice")
        with FakeAgent(["m1"]) as agent:
            await hub.heartbeat(key, "rig-1", agent.url, LLM)
            agent.stall_after = 1  # one chunk, then the stream waits
            client = hub.client(key)

            async def chat() -> None:
                stream = await client.chat.completions.create(
                    model="m1", messages=[{"role": "user", "content": marker}], stream=True
                )
                async for _ in stream:
                    pass

            held = asyncio.ensure_future(chat())
            assert await wait_until(lambda: len(agent.posts("/v1/chat/completions")) == 1)
            assert hub.hub.inflight == 1
            holders = {
                type(referrer).__name__
                for found in gc.get_objects()
                if isinstance(found, list)
                and found
                and isinstance(found[0], dict)
                and found[0].get("content") == marker
                for referrer in gc.get_referrers(found)
            }
            held.cancel()
            assert "Conversation" not in holders, holders
