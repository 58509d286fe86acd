"""Reachability checks cannot be turned into a port scanner: the hub checks at most
`max_probe_targets_per_user` distinct host:ports per user per minute (issue 9)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from inferclub.hub.limits import ProbeBudget, probe_target
from tests.support.fakes.agent import LLM
from tests.support.hubapp import running_hub


class Listeners:
    """Plain TCP listeners on 127.0.0.1 that count the connections they accept and answer
    each with an empty HTTP 200 (a reachable agent, as far as the check goes)."""

    def __init__(self) -> None:
        self.accepted: dict[int, int] = {}
        self._servers: list[asyncio.Server] = []

    async def open(self) -> int:
        port = 0

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted[port] += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        self.accepted[port] = 0
        self._servers.append(server)
        return port

    def close(self) -> None:
        for server in self._servers:
            server.close()


async def test_rotating_callback_urls_stops_reaching_new_ports_past_the_budget(
    tmp_path: Path,
) -> None:
    listeners = Listeners()
    ports = [await listeners.open() for _ in range(5)]
    try:
        async with running_hub(
            tmp_path, max_probe_targets_per_user=3, heartbeat_min_interval=0
        ) as hub:
            key = await hub.user_with_key("mallory")
            replies = []
            # One provider moving its callback URL at every beat: a new port each time.
            for port in ports:
                url = f"http://127.0.0.1:{port}/v1"
                status, reply = await hub.heartbeat(key, "scanner", url, LLM)
                assert status == 200, reply
                replies.append(reply)
            # Back to a port checked this minute: checked again, at no cost to the budget.
            status, back = await hub.heartbeat(
                key, "scanner", f"http://127.0.0.1:{ports[0]}/v1", LLM
            )
            assert status == 200, back
            # Another user has a budget of its own.
            other = await hub.user_with_key("alice")
            url = f"http://127.0.0.1:{ports[4]}/v1"
            status, alice = await hub.heartbeat(other, "rig", url, LLM)
            assert status == 200, alice
    finally:
        listeners.close()
    assert [r["callback_reachable"] for r in replies] == [True, True, True, None, None]
    assert all("callback_error" not in r for r in replies[:3])
    for reply in replies[3:]:
        assert "not checked" in reply["callback_error"]
        assert "max_probe_targets_per_user" in reply["callback_error"]
    assert back["callback_reachable"] is True
    assert alice["callback_reachable"] is True
    # The hub connected to the first three ports only (the first twice), never to the
    # fourth, and to the fifth only for the other user.
    assert [listeners.accepted[p] for p in ports] == [2, 1, 1, 0, 1]


def test_the_budget_counts_distinct_targets_per_user_in_a_sliding_minute() -> None:
    now = [1000.0]
    budget = ProbeBudget(2, window=60, clock=lambda: now[0])
    assert budget.allow(1, "a:80") and budget.allow(1, "b:80")
    assert not budget.allow(1, "c:80")
    assert budget.allow(1, "a:80"), "a target already checked in the window is free"
    assert budget.allow(2, "c:80"), "another user has a budget of its own"
    now[0] += 59
    assert not budget.allow(1, "c:80")
    now[0] += 1
    assert budget.allow(1, "c:80"), "a minute after the first checks, they no longer count"
    assert budget.allow(1, "d:80")
    assert not budget.allow(1, "e:80")
    assert ProbeBudget(0).allow(1, "any:1"), "0 means no limit"


def test_a_probe_target_is_the_host_and_port_connected_to() -> None:
    assert probe_target("http://Agent.Example:8000/v1") == "agent.example:8000"
    assert probe_target("https://agent.example/v1") == "agent.example:443"
    assert probe_target("http://[::1]/x") == "::1:80"
