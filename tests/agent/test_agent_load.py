"""What the agent's heartbeat says of each service beyond its models: capacity, the models
loaded now (by their advertised names), and a service whose engine is down."""

from __future__ import annotations

import asyncio

import aiohttp

from inferclub.agent.services import ServiceTable, describe
from inferclub.engines import Model, Service, get_engines, get_plugin_manager
from tests.support.fakes import FakeOllama

ENGINES = get_engines(get_plugin_manager(entrypoints=False))


def announced(table: ServiceTable) -> list[dict[str, object]]:
    async def probe() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            await table.probe_all(session)

    asyncio.run(probe())
    return [s.to_json() for s in table.announced()]


def test_the_heartbeat_carries_capacity_hot_models_and_down_engines() -> None:
    with FakeOllama(loaded=["qwen3:8b"]) as fake:
        ollama = Service(
            "ollama",
            "ollama",
            fake.url,
            models=(Model("qwen3:8b", "qwen"), Model("llama3.2", "llama")),
            max_concurrency=4,
        )
        gone = Service("gone", "vllm", "http://127.0.0.1:9/v1", models=(Model("big"),))
        table = ServiceTable([ollama, gone], ENGINES)
        (live,) = announced(table)
    assert live["max_concurrency"] == 4
    assert live["loaded"] == ["qwen"]  # the alias of the engine's qwen3:8b
    assert "queue" not in live and "detail" not in live
    (down,) = [s.to_json() for s in table.down()]
    assert down["models"] == ["big"]
    assert "cannot connect to 127.0.0.1:9" in str(down["detail"])
    # The model list the agent serves itself still has only live services.
    assert [s.name for s in table.advertised()] == ["ollama"]


def test_failure_reasons_name_no_library_internals() -> None:
    """What a client reads in a mid-stream error event, and the dashboard in a service's
    health: never aiohttp's own text."""
    cut = aiohttp.ClientPayloadError(
        "Response payload is not completed: <TransferEncodingError: 400, message='Not enough"
        " data to satisfy transfer length header.'>"
    )
    assert describe(cut) == "the engine's answer was cut off"
    assert describe(aiohttp.ServerDisconnectedError()) == "the engine closed the connection"
    assert "Error:" not in describe(aiohttp.ClientOSError(104, "Connection reset by peer"))


def test_a_busy_engine_that_misses_its_health_check_is_not_down() -> None:
    """An engine serving our requests that answers no health check in time is busy; with
    nothing in flight the same silence means down."""

    async def check() -> list[tuple[bool, str]]:
        held: list[asyncio.StreamWriter] = []
        # Accepts and never answers; the connections are closed at the end.
        silent = await asyncio.start_server(lambda r, w: held.append(w), "127.0.0.1", 0)
        port = silent.sockets[0].getsockname()[1]
        service = Service("asr", "vllm", f"http://127.0.0.1:{port}/v1", models=(Model("w"),))
        table = ServiceTable([service], ENGINES)
        st = table.states["asr"]
        st.up, st.checked_at = True, 0.0  # an earlier probe found it up
        seen = []
        async with silent, aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as s:
            st.in_flight = 1
            await table.probe_all(s)
            seen.append((st.up, st.detail))
            st.in_flight = 0
            await table.probe_all(s)
            seen.append((st.up, st.detail))
            for writer in held:
                writer.close()
        return seen

    (busy_up, busy), (idle_up, idle) = asyncio.run(check())
    assert busy_up and busy.startswith("busy: health check timed out with 1 requests")
    assert not idle_up and idle == "timed out"
