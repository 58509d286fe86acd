"""The README documents every setting, endpoint, hook and plugin-author fixture the code has."""

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


def test_every_testing_fixture_is_documented() -> None:
    import inferclub.testing

    def is_fixture(obj: object) -> bool:
        # How pytest marks a fixture function: 8.4 and later, then older releases.
        return hasattr(obj, "_fixture_function_marker") or hasattr(obj, "_pytestfixturefunction")

    exported = [getattr(inferclub.testing, name) for name in inferclub.testing.__all__]
    fixtures = sorted(
        name
        for name, obj in zip(inferclub.testing.__all__, exported, strict=True)
        if is_fixture(obj)
    )
    assert fixtures == ["fake_hub", "start_agent"]
    for name in fixtures:
        assert f"`{name}" in README, name
