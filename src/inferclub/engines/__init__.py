"""The engine plugin API of inferclub.

Engines teach the agent about one kind of local inference server. Write one by subclassing
`Engine` and registering it from a plugin::

    from inferclub.engines import Engine, hookimpl

    class MyEngine(Engine):
        name = "my-engine"

    @hookimpl
    def register_engines(register):
        register(MyEngine)

and declare the module in your package's `inferclub.engines` entry-point group.
"""

from __future__ import annotations

from inferclub.engines.base import (
    Engine,
    EngineError,
    EngineRequest,
    EngineResponse,
    Health,
    Load,
    Model,
    Service,
    get_json,
    openai_model_ids,
)
from inferclub.engines.hookspecs import hookimpl, hookspec
from inferclub.engines.plugins import (
    ENTRYPOINT_GROUP,
    engine_sources,
    get_engines,
    get_plugin_manager,
)

# Part of the plugin API since before the hub and the agent shared these; defined once there.
from inferclub.openai_errors import error_body as openai_error
from inferclub.openai_errors import normalise_error_body
from inferclub.wire import SERVICE_TYPES

__all__ = [
    "ENTRYPOINT_GROUP",
    "SERVICE_TYPES",
    "Engine",
    "EngineError",
    "EngineRequest",
    "EngineResponse",
    "Health",
    "Load",
    "Model",
    "Service",
    "engine_sources",
    "get_engines",
    "get_json",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "normalise_error_body",
    "openai_error",
    "openai_model_ids",
]
