"""The README documents every setting, endpoint and hook the code has."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from inferclub.hub.config import setting_names
from inferclub.hub.handlers import agent as agent_handlers
from inferclub.hub.handlers import openai as openai_handlers

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.mark.parametrize("name", setting_names())
def test_every_setting_is_documented(name: str) -> None:
    assert f"`{name}`" in README and f"`INFERCLUB_{name.upper()}`" in README


def test_every_endpoint_is_documented() -> None:
    for pattern, _ in openai_handlers.routes + agent_handlers.routes:
        path = pattern.replace("(.+)", "{id}")
        assert path in README, path


def test_every_hook_is_documented() -> None:
    from inferclub.engines import hookspecs

    hooks = [n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "inferclub_spec")]
    assert hooks
    for hook in hooks:
        assert re.search(rf"\b{hook}\b", README), hook
