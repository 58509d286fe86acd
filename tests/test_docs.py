"""The README documents every endpoint and hook the code has; docs/configuration.md, generated
from the settings' own help, documents every setting and is current."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from inferclub.hub import cli
from inferclub.hub.config import Settings, setting_names
from inferclub.hub.handlers import agent as agent_handlers
from inferclub.hub.handlers import openai as openai_handlers

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CONFIGURATION = ROOT / "docs" / "configuration.md"
REGENERATE = ".venv/bin/inferclub config docs > docs/configuration.md"


def test_configuration_reference_is_current(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "docs"]) == 0
    printed = capsys.readouterr().out
    assert printed == CONFIGURATION.read_text(), (
        f"docs/configuration.md is not what `inferclub config docs` prints; run `{REGENERATE}`"
    )


@pytest.mark.parametrize("name", setting_names())
def test_every_setting_is_documented(name: str) -> None:
    help_text = next(f.metadata.get("help", "") for f in fields(Settings) if f.name == name)
    assert help_text.strip(), f"setting {name!r} has no help metadata in hub/config.py"
    text = CONFIGURATION.read_text()
    assert f"| `{name}` |" in text and f"`INFERCLUB_{name.upper()}`" in text


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
