"""A proxied request holds its start (hub/fairness.py) until its answer begins, and gives it
back on every way out: a user whose starts leaked would be held back for good on a busy hub
while another user competes."""

from __future__ import annotations

import asyncio

import openai
import pytest

from tests.support.fakes.agent import FakeAgent
from tests.support.hubapp import HubApp, wait_until

MESSAGES = [{"role": "user", "content": "hi"}]


async def waiting_at_the_agent(
    hub_app: HubApp, fake_agent: FakeAgent, key: str
) -> asyncio.Future[object]:
    """A chat sent with the SDK that the agent holds (until ``fake_agent.release()``)."""
    fake_agent.hold()
    client = hub_app.client(key)
    chat = asyncio.ensure_future(
        client.chat.completions.create(model="m1", messages=MESSAGES)  # type: ignore[arg-type]
    )
    assert await wait_until(lambda: hub_app.hub.inflight == 1)
    return chat


async def test_a_whole_answer_holds_its_start_until_it_ends(
    hub_app: HubApp, fake_agent: FakeAgent, alice: str
) -> None:
    turns = hub_app.hub.turns
    chat = await waiting_at_the_agent(hub_app, fake_agent, alice)
    assert turns.holding() == 1  # waiting at the agent, no answer begun
    fake_agent.release()
    await chat
    assert turns.holding() == 0


async def test_a_stream_gives_its_start_back_at_its_first_bytes(
    hub_app: HubApp, fake_agent: FakeAgent, alice: str
) -> None:
    turns = hub_app.hub.turns
    fake_agent.stall_after = 1  # one chunk, then the stream hangs
    client = hub_app.client(alice)
    stream = await client.chat.completions.create(
        model="m1",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
    )
    first = await stream.__anext__()
    assert first.choices[0].delta is not None
    assert turns.holding() == 0  # the stream goes on; its start is over
    await stream.close()


async def test_refused_and_failed_requests_give_their_start_back(
    hub_app: HubApp, fake_agent: FakeAgent, alice: str
) -> None:
    turns = hub_app.hub.turns
    client = hub_app.client(alice)
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="nope", messages=MESSAGES)  # type: ignore[arg-type]
    fake_agent.raw_answer = (500, b'{"error": {"message": "engine down"}}')
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="m1", messages=MESSAGES)  # type: ignore[arg-type]
    assert turns.holding() == 0


async def test_a_client_that_leaves_gives_its_start_back(
    hub_app: HubApp, fake_agent: FakeAgent, alice: str
) -> None:
    turns = hub_app.hub.turns
    chat = await waiting_at_the_agent(hub_app, fake_agent, alice)
    assert turns.holding() == 1
    chat.cancel()  # the SDK closes its connection
    assert await wait_until(lambda: turns.holding() == 0)
    fake_agent.release()
