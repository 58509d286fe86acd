"""The plugin manager factory and the engine table it produces."""

from __future__ import annotations

import importlib

import pluggy

from inferclub.engines import hookspecs
from inferclub.engines.base import Engine
from inferclub.wire import SERVICE_TYPES

#: Entry-point group third-party engine plugins register under.
ENTRYPOINT_GROUP = "inferclub.engines"

#: Modules of the builtin engines; each is an ordinary plugin.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "inferclub.engines.builtin.vllm",
    "inferclub.engines.builtin.lmstudio",
    "inferclub.engines.builtin.ollama",
    "inferclub.engines.builtin.llamacpp",
    "inferclub.engines.builtin.whisper",
    "inferclub.engines.builtin.openai_compat",
)


def get_plugin_manager(entrypoints: bool = True) -> pluggy.PluginManager:
    """A new plugin manager with the builtin engines and (optionally) installed plugins.

    `check_pending()` makes a plugin that implements a misspelt hook fail here, at start-up.
    """
    pm = pluggy.PluginManager("inferclub")
    pm.add_hookspecs(hookspecs)
    if entrypoints:
        pm.load_setuptools_entrypoints(ENTRYPOINT_GROUP)
    for name in BUILTIN_PLUGINS:
        module = importlib.import_module(name)
        if not pm.is_registered(module):
            pm.register(module, name)
    pm.check_pending()
    return pm


def get_engines(pm: pluggy.PluginManager) -> dict[str, Engine]:
    """Call `register_engines` and return one instance per engine name, sorted by name.

    The first class registered under a name wins (third-party plugins run before builtins).
    """
    classes: dict[str, type[Engine]] = {}

    def register(engine_cls: type[Engine]) -> None:
        if not (isinstance(engine_cls, type) and issubclass(engine_cls, Engine)):
            raise TypeError(f"register() takes an Engine subclass, not {engine_cls!r}")
        if not engine_cls.name:
            raise TypeError(f"{engine_cls.__qualname__} has no `name`")
        unknown = set(engine_cls.service_types) - set(SERVICE_TYPES)
        if unknown:
            raise TypeError(
                f"{engine_cls.__qualname__}.service_types has unknown types {sorted(unknown)}"
            )
        classes.setdefault(engine_cls.name, engine_cls)

    pm.hook.register_engines(register=register)
    return {name: classes[name]() for name in sorted(classes)}


def engine_sources(pm: pluggy.PluginManager) -> dict[str, str]:
    """Which plugin registered each engine name (`builtin` or the distribution name)."""
    sources: dict[str, str] = {}
    dists = dict(pm.list_plugin_distinfo())
    for impl in pm.hook.register_engines.get_hookimpls()[::-1]:
        # get_hookimpls() is in call order reversed; walk it in call order.
        found: list[type[Engine]] = []
        impl.function(register=found.append)
        dist = dists.get(impl.plugin)
        label = f"{dist.project_name}" if dist is not None else "builtin"
        for cls in found:
            sources.setdefault(cls.name, label)
    return sources
