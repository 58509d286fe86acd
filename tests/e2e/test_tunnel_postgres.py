"""Two `inferclub serve` processes on one PostgreSQL database, as on two machines, and an agent
whose tunnel lands on the first: the openai SDK against the second is served through it (over
the first hub's internal listener), and when the first hub dies the second answers an
OpenAI-shaped error at once, not a hang."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import openai
import pytest

from inferclub.testing import AgentProcess
from tests.support.fakes import FakeVllm
from tests.support.hubproc import HubProcess
from tests.support.postgres import pg_schema
from tests.support.stack import wait_models
from tests.support.tunnel import start_tunnel_agent

pytestmark = [pytest.mark.postgres, pytest.mark.subprocess]

CHAT = [{"role": "user", "content": "hi"}]
FORWARDED = "is held at http://127.0.0.1:"


@dataclass
class TwoHubs:
    dsn: str
    a: HubProcess
    b: HubProcess
    key: str
    engine: FakeVllm

    def via_b(self) -> openai.OpenAI:
        # A hang would end in APITimeoutError, not in the error answer the tests expect.
        return openai.OpenAI(base_url=self.b.api_base, api_key=self.key, max_retries=0, timeout=20)


@pytest.fixture
def tunnel_two_hubs(tmp_path: Path) -> Iterator[TwoHubs]:
    env = {
        "INFERCLUB_SECRETS_FILE": str(tmp_path / "secrets.json"),
        "INFERCLUB_TUNNEL_PING_INTERVAL": "1",
        # A provider that failed is tried again soon (hub B hears none of its heartbeats).
        "INFERCLUB_COOLDOWN": "0.2",
    }
    engine = FakeVllm(["m1"]).start()
    with pg_schema() as dsn:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        # Each with its own internal listener (127.0.0.1, a port of its own).
        a = HubProcess(tmp_path / "a", env=env, db=dsn).start()
        b: HubProcess | None = None
        try:
            b = HubProcess(tmp_path / "b", env=env, db=dsn).start()
            yield TwoHubs(dsn, a, b, a.user_with_key("alice"), engine)
        finally:
            if b is not None:
                b.stop()
            a.stop()
            engine.close()


def request_row(dsn: str, request_id: str) -> asyncpg.Record | None:
    """The history row of ``request_id`` once written (rows are batched)."""

    async def fetch() -> asyncpg.Record | None:
        conn = await asyncpg.connect(dsn)
        try:
            row: asyncpg.Record | None = await conn.fetchrow(
                "SELECT status, endpoint FROM requests WHERE id = $1", request_id
            )
            return row
        finally:
            await conn.close()

    deadline = time.monotonic() + 10
    while (row := asyncio.run(fetch())) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return row


def failed_chat(sdk: openai.OpenAI) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.chat.completions.create(model="m1", messages=CHAT)  # type: ignore[arg-type]
    return caught.value


def wait_chat(sdk: openai.OpenAI, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            sdk.chat.completions.create(model="m1", messages=CHAT)  # type: ignore[arg-type]
            return
        except openai.APIStatusError:
            assert time.monotonic() < deadline, "hub B never served through the tunnel again"
            time.sleep(0.2)


def wait_log(hub: HubProcess, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while text not in hub.log():
        assert time.monotonic() < deadline, f"{text!r} never in the hub's log"
        time.sleep(0.05)


def test_a_request_at_another_hub_goes_through_the_tunnel_and_fails_cleanly(
    tunnel_two_hubs: TwoHubs, tmp_path: Path
) -> None:
    hubs = tunnel_two_hubs
    service = {"name": "chat", "engine": "vllm", "url": hubs.engine.url}
    agent = start_tunnel_agent(hubs.a, hubs.key, tmp_path / "agent.yaml", service)
    again: AgentProcess | None = None
    try:
        with hubs.via_b() as sdk:
            wait_models(sdk, {"m1"})  # hub B heard of it through the store
            chat = sdk.chat.completions.create(model="m1", messages=CHAT)  # type: ignore[arg-type]
            assert chat.choices[0].message.content
            chunks = list(
                sdk.chat.completions.create(model="m1", messages=CHAT, stream=True)  # type: ignore[arg-type]
            )
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert FORWARDED in hubs.b.log(), "hub B never forwarded to hub A"

            # The agent stops answering: hub A closes its tunnel after two pings, while hub B
            # still sees the provider online (its heartbeat is recent) and forwards to A.
            agent.proc.send_signal(signal.SIGSTOP)
            try:
                wait_log(hubs.a, "provider 'home-rig' of alice offline: its tunnel closed")
                gone = failed_chat(sdk)
            finally:
                agent.proc.send_signal(signal.SIGCONT)
            assert gone.status_code == 502
            assert gone.body["code"] == "upstream_unreachable"  # type: ignore[index]
            assert "holds it no more" in gone.body["message"]  # type: ignore[index]
            # The id the client got is hub B's request, in the shared history.
            request_id = gone.response.headers["X-Request-Id"]
            row = request_row(hubs.dsn, request_id)
            assert row is not None and row["status"] == 502

            # The agent dials in again, and hub B serves through it.
            wait_chat(sdk)
            # Hub A dies with the tunnel in it: hub B answers an error, and does not hang.
            hubs.a.stop(signal.SIGKILL)
            dead = failed_chat(sdk)
            assert dead.status_code == 502, dead.body
            assert dead.body["code"] == "upstream_unreachable"  # type: ignore[index]
            assert "(connection refused)" in dead.body["message"]  # type: ignore[index]
            assert dead.response.headers["X-Request-Id"].startswith("req_")

            # An agent that dials hub B takes the provider over there.
            agent.kill()
            again = start_tunnel_agent(hubs.b, hubs.key, tmp_path / "again.yaml", service)
            chat = sdk.chat.completions.create(model="m1", messages=CHAT)  # type: ignore[arg-type]
            assert chat.choices[0].message.content
    finally:
        agent.kill()
        if again is not None:
            again.kill()
