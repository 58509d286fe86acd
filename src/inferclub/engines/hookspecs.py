"""Hook specifications of the `inferclub` plugin system.

Plugins are found through the `inferclub.engines` entry-point group and implement hooks with
`inferclub.engines.hookimpl`. Hooks only register things; behaviour lives on the classes they
register. The builtin engines are plugins too, registered with `trylast=True`, so a third-party
plugin that registers an engine under a builtin name takes that name over.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from inferclub.engines.base import Engine

hookspec = pluggy.HookspecMarker("inferclub")
hookimpl = pluggy.HookimplMarker("inferclub")


@hookspec
def register_engines(register: Callable[[type[Engine]], None]) -> None:
    """Register engine classes.

    Called once each time the agent (or a tool such as `inference-club-agent check`) builds its
    engine table, before any manifest is validated.

    Args:
        register: call it once per engine with an `inferclub.engines.Engine` subclass, for
            example `register(MyEngine)`. The class's `name` is the name manifests use in
            `engine:`. It raises `TypeError` for anything that is not an `Engine` subclass
            with a non-empty `name`.

    Returns:
        Nothing; the return value is ignored.

    When two plugins register the same name, the one called first wins: third-party plugins are
    called before the builtins, so they can replace a builtin engine.

    This hook must not do network or disk I/O: it runs on every start, before the manifest is
    even read. Engines do their I/O later, in `discover_models`, `health` and `probe`.
    """
