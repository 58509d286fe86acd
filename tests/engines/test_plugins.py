"""Engine plugins: entry points, builtins registered like plugins, override, hook validation.

The example plugin serving through a real agent is tested by its own tests, as a plugin
author would (tests/plugins/example_engine/tests).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy
import pytest

from inferclub.engines import Engine, engine_sources, get_engines, get_plugin_manager, hookimpl
from inferclub.engines.builtin.vllm import VllmEngine

BUILTINS = {"vllm", "lmstudio", "ollama", "llamacpp", "whisper", "openai"}


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
