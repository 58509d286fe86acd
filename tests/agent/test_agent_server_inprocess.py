"""The agent's callback server in process: its errors, its methods, and its endpoint table."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import tornado.ioloop
import tornado.web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from inferclub import signing, wire
from inferclub.agent.heartbeat import HubAuth
from inferclub.agent.metrics import AgentMetrics
from inferclub.agent.server import Runtime, make_app
from inferclub.agent.services import ServiceState, ServiceTable
from inferclub.engines import Model, Service, get_engines, get_plugin_manager
from tests.support.fakes import FakeVllm

IDS = itertools.count()
#: The hub this agent trusts, and the provider id it gave the agent.
HUB = signing.HubSigner(Ed25519PrivateKey.generate())
PROVIDER = 7


@pytest.fixture
def failed() -> list[ServiceState]:
    """Services the server reported as failed (the runner probes them at once)."""
    return []


@pytest.fixture
def runtime(
    io_loop: tornado.ioloop.IOLoop, failed: list[ServiceState], tmp_path: Path
) -> Iterator[Runtime]:
    async def session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    table = ServiceTable(
        [Service("qwen", "vllm", "http://127.0.0.1:9/v1", models=(Model("qwen3"),))],
        get_engines(get_plugin_manager(entrypoints=False)),
    )
    auth = HubAuth(signing.KnownHubs(tmp_path / "known_hubs"))
    auth.accept("http://hub.test", wire.HeartbeatReply(PROVIDER, HUB.public_key))
    rt = Runtime(table, auth, io_loop.run_sync(session), failed.append, AgentMetrics(table))
    yield rt
    io_loop.run_sync(rt.session.close)


@pytest.fixture
def app(runtime: Runtime) -> tornado.web.Application:
    return make_app(runtime)


async def call(
    client: Any,
    method: str,
    path: str,
    body: Any = None,
    signer: signing.HubSigner | None = HUB,
    provider: int = PROVIDER,
) -> tuple[int, dict[str, Any]]:
    """``method /v1path`` as the hub sends it: signed by ``signer`` for ``provider``."""
    headers = {"Content-Type": "application/json"}
    raw = None if body is None else json.dumps(body).encode()
    if signer is not None:
        headers.update(
            signer.sign(
                method, "/v1" + path, f"req_{next(IDS)}", str(provider), raw or b"", service=""
            )
        )
    resp = await client.fetch(
        "/v1" + path,
        method=method,
        headers=headers,
        body=raw,
        allow_nonstandard_methods=True,
        raise_error=False,
    )
    data = json.loads(resp.body)
    assert set(data["error"]) == {"message", "type", "param", "code"}
    return resp.code, data["error"]


async def test_paths_map_to_service_types_by_the_shared_table(http_server_client: Any) -> None:
    for path, service_type in wire.ENDPOINT_TYPES.items():
        status, error = await call(http_server_client, "POST", path, {"model": "nope"})
        assert (status, error["code"]) == (404, "model_not_found"), path
        assert error["message"].endswith(f"not served by this agent as {service_type}")
    status, error = await call(http_server_client, "POST", "/images/variations", {"model": "qwen3"})
    assert (status, error["code"]) == (404, "not_found")
    assert "/v1/images/variations" in error["message"]


async def test_only_get_and_post(http_server_client: Any) -> None:
    for method in ("PUT", "DELETE", "PATCH"):
        status, error = await call(http_server_client, method, "/chat/completions", {})
        assert status == 405 and error["type"] == "invalid_request_error", method


async def test_auth_errors_are_openai_shaped(http_server_client: Any, runtime: Runtime) -> None:
    status, error = await call(http_server_client, "GET", "/models", signer=None)
    assert (status, error["type"], error["code"]) == (
        401,
        "invalid_request_error",
        "signature_missing",
    )
    runtime.auth.provider_id = None
    status, error = await call(http_server_client, "GET", "/models")
    assert (status, error["type"]) == (503, "service_unavailable")


async def test_no_model_is_a_400_on_param_model(http_server_client: Any) -> None:
    status, error = await call(http_server_client, "POST", "/chat/completions", {"x": 1})
    assert (status, error["param"]) == (400, "model")


async def test_unreachable_engine_is_a_502_and_the_service_is_reprobed(
    http_server_client: Any, failed: list[ServiceState]
) -> None:
    status, error = await call(http_server_client, "POST", "/chat/completions", {"model": "qwen3"})
    assert (status, error["code"], error["type"]) == (502, "engine_unreachable", "server_error")
    assert "'qwen'" in error["message"]
    assert [state.name for state in failed] == ["qwen"]


async def test_after_a_changed_hub_key_nothing_is_served(
    http_server_client: Any, runtime: Runtime
) -> None:
    """The heartbeat that brings another key stops the agent; until it has, requests signed
    with either key get a 503, never an answer."""
    impostor = signing.HubSigner(Ed25519PrivateKey.generate())
    with pytest.raises(signing.HubKeyChanged):
        runtime.auth.accept("http://hub.test", wire.HeartbeatReply(PROVIDER, impostor.public_key))
    for signer in (HUB, impostor):
        status, error = await call(http_server_client, "GET", "/models", signer=signer)
        assert (status, error["type"]) == (503, "service_unavailable")


async def test_the_server_header_names_no_version(http_server_client: Any) -> None:
    for path in ("/health", "/v1/models"):
        resp = await http_server_client.fetch(path, raise_error=False)
        assert resp.headers["Server"] == "inference-club-agent", path


async def test_a_request_cut_by_the_agents_own_shutdown_does_not_blame_the_hub(
    http_server_client: Any, runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    """At the drain deadline the agent closes what is left itself; its log says so."""
    engine = FakeVllm(["qwen3"]).start()
    engine.chunks, engine.chunk_delay = 50, 0.1
    try:
        runtime.table = ServiceTable(
            [Service("qwen", "vllm", engine.url, models=(Model("qwen3"),))],
            get_engines(get_plugin_manager(entrypoints=False)),
        )
        body = json.dumps({"model": "qwen3", "messages": [], "stream": True}).encode()
        path = "/v1/chat/completions"
        headers = {
            "Content-Type": "application/json",
            **HUB.sign("POST", path, "req_drain", str(PROVIDER), body, service=""),
        }
        caplog.set_level(logging.INFO, "inferclub.agent.server")
        async with aiohttp.ClientSession() as client:
            resp = await client.post(http_server_client.get_url(path), data=body, headers=headers)
            assert (await resp.content.readline()).startswith(b"data: ")
            runtime.draining = True  # what the runner sets before the deadline cuts the rest
            resp.close()
            for _ in range(100):
                if "cancelled the request" in caplog.text:
                    break
                await asyncio.sleep(0.05)
        assert "shutting down; cancelled the request to service qwen" in caplog.text
        assert "hub disconnected" not in caplog.text
    finally:
        engine.close()


async def test_a_body_over_the_agents_limit_is_an_openai_413_before_it_is_read(
    http_server_client: Any, runtime: Runtime
) -> None:
    """A hub whose limits are above this agent's gets a clear 413 to relay, not a bare 400."""
    runtime.max_body = 1000
    status, error = await call(
        http_server_client, "POST", "/chat/completions", {"model": "qwen3", "pad": "x" * 2000}
    )
    assert (status, error["code"], error["type"]) == (
        413,
        "request_too_large",
        "invalid_request_error",
    )
    assert "1000 bytes" in error["message"]
