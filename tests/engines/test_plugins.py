"""Engine plugins: entry points, builtins registered like plugins, override, hook validation."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pluggy
import pytest

from inferclub.engines import Engine, engine_sources, get_engines, get_plugin_manager, hookimpl
from inferclub.engines.builtin.vllm import VllmEngine
from tests.support.agentproc import StartAgent, manifest_text, run_cli
from tests.support.fakehub import CALLBACK_TOKEN, FakeHub
from tests.support.fakes.base import FakeHandler, FakeServer, chat_chunks, words

BUILTINS = {"vllm", "lmstudio", "ollama", "llamacpp", "whisper", "openai"}


class FakeExampleLM(FakeServer):
    """The made-up server the example plugin (tests/plugins/example_engine) talks to."""

    def routes(self) -> list[Any]:
        args = {"fake": self}
        return [(r"/ping", Ping, args), (r"/api/models", Models, args), (r"/api/chat", Chat, args)]


class Ping(FakeHandler):
    def get(self) -> None:
        self.finish("pong")


class Models(FakeHandler):
    def get(self) -> None:
        self.send_json(
            {
                "models": [
                    {"name": "example-7b", "ready": True},
                    {"name": "example-70b", "ready": False},
                ]
            }
        )


class Chat(FakeHandler):
    async def post(self) -> None:
        body = self.json_body()
        await self.stream_events(chat_chunks(body["model"], words(3), False), 0.0)


@pytest.fixture
def example_server() -> Iterator[FakeExampleLM]:
    with FakeExampleLM() as server:
        yield server


def test_entry_point_plugin_is_loaded() -> None:
    pm = get_plugin_manager()
    engines = get_engines(pm)
    assert set(engines) == BUILTINS | {"example"}
    assert engine_sources(pm)["example"] == "inferclub-example-engine"
    assert engine_sources(pm)["vllm"] == "builtin"
    assert "example" not in get_engines(get_plugin_manager(entrypoints=False))


def test_builtins_are_ordinary_trylast_plugins() -> None:
    pm = get_plugin_manager(entrypoints=False)
    impls = pm.hook.register_engines.get_hookimpls()
    assert {impl.plugin_name for impl in impls} == {
        f"inferclub.engines.builtin.{m}"
        for m in ("vllm", "lmstudio", "ollama", "llamacpp", "whisper", "openai_compat")
    }
    assert all(impl.trylast for impl in impls)


def test_a_plugin_can_take_over_a_builtin_name() -> None:
    class PatchedVllm(VllmEngine):
        description = "patched"

    class Plugin:
        @hookimpl
        def register_engines(self, register: Callable[[type[Engine]], None]) -> None:
            register(PatchedVllm)

    pm = get_plugin_manager(entrypoints=False)
    pm.register(Plugin())
    assert isinstance(get_engines(pm)["vllm"], PatchedVllm)
    # Each test builds its own manager: nothing global changed.
    assert type(get_engines(get_plugin_manager(entrypoints=False))["vllm"]) is VllmEngine


def test_misspelt_hooks_fail_at_start_up() -> None:
    class Typo:
        @hookimpl
        def register_engine(self, register: Callable[[type[Engine]], None]) -> None:
            raise AssertionError("never called")

    pm = get_plugin_manager(entrypoints=False)
    pm.register(Typo())
    with pytest.raises(pluggy.PluginValidationError, match="register_engine"):
        pm.check_pending()


@pytest.mark.parametrize("bad", [object, type("NoName", (Engine,), {})])
def test_register_rejects_what_is_not_an_engine(bad: Any) -> None:
    class Plugin:
        @hookimpl
        def register_engines(self, register: Callable[[Any], None]) -> None:
            register(bad)

    pm = get_plugin_manager(entrypoints=False)
    pm.register(Plugin())
    with pytest.raises(TypeError):
        get_engines(pm)


def test_agent_serves_through_the_plugin_engine(
    start_agent: StartAgent, hub: FakeHub, example_server: FakeExampleLM, tmp_path: Path
) -> None:
    service = {"name": "ex", "engine": "example", "url": example_server.root}
    path = tmp_path / "example.yaml"
    path.write_text(manifest_text(service))
    check = run_cli("check", "--manifest", str(path), "--json")
    assert check.returncode == 0, check.stderr
    [row] = json.loads(check.stdout)["services"]
    assert row["up"] and row["models"] == ["example-7b"]

    agent = start_agent(service)
    beat = hub.wait_for(lambda b: bool(b["services"]))
    assert beat["services"][0]["engine"] == "example"
    agent.wait_registered()
    parts = urlsplit(agent.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=json.dumps({"model": "example-7b", "messages": [], "stream": True}),
        headers={"Authorization": f"Bearer {CALLBACK_TOKEN}", "Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status == 200
    assert body.count(b"tok") == 3 and body.rstrip().endswith(b"[DONE]")
    assert example_server.posts("/api/chat")  # the plugin's path translation was used
