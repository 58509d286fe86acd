"""The manual covers every hook, engine attribute and method, builtin engine and option,
manifest field, and agent command and option."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from inferclub.agent.cli import build_parser
from inferclub.agent.manifest import AGENT_FIELDS, HOST_FIELDS, MODEL_FIELDS, SERVICE_FIELDS
from inferclub.engines import Engine, get_engines, get_plugin_manager, hookspecs

DOCS = Path(__file__).resolve().parents[2] / "docs"


def doc(name: str) -> str:
    return (DOCS / name).read_text()


def test_every_hook_is_documented() -> None:
    hooks = [
        n
        for n, f in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(f, "inferclub_spec")
    ]
    assert hooks == ["register_engines"]
    for hook in hooks:
        assert f"`{hook}(" in doc("plugin-tutorial.md")
        assert getattr(hookspecs, hook).__doc__.strip()


@pytest.mark.parametrize(
    "name",
    sorted(
        n for n, v in vars(Engine).items() if not n.startswith("_") and not isinstance(v, property)
    ),
)
def test_every_engine_attribute_and_method_is_documented(name: str) -> None:
    assert f"`{name}" in doc("plugin-tutorial.md")


def test_every_builtin_engine_and_option_is_documented() -> None:
    text = doc("engines.md")
    for name, engine in get_engines(get_plugin_manager(entrypoints=False)).items():
        assert f"| `{name}` |" in text
        for option in engine.options:
            assert f"`{option}" in text, option


@pytest.mark.parametrize(
    "field", sorted(set(AGENT_FIELDS + HOST_FIELDS + SERVICE_FIELDS + MODEL_FIELDS))
)
def test_every_manifest_field_is_documented(field: str) -> None:
    assert f"`{field}" in doc("agent.md")


def test_every_command_and_option_is_documented() -> None:
    parser = build_parser()
    text = doc("agent.md")
    sub = next(a for a in parser._actions if a.dest == "command")
    for command, subparser in sub.choices.items():  # type: ignore[union-attr]
        assert f"inference-club-agent {command}" in text
        for action in subparser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}" in text or f"[{flag}" in text, (command, flag)


def test_the_tutorial_code_is_the_example_plugin() -> None:
    """plugin-tutorial.md says its steps build the example plugin the suite runs ("known to
    work"): every line of its engine code (steps 2 to 5) is a line of that plugin, so an edit to
    either that breaks the tutorial fails here."""
    text = doc("plugin-tutorial.md")
    steps = text[text.index("## 2. ") : text.index("## 6. ")]
    blocks = re.findall(r"```python\n(.*?)```", steps, re.S)
    plugin = DOCS.parent / "tests" / "plugins" / "example_engine" / "inferclub_example_engine.py"
    source = set(plugin.read_text().splitlines())
    lines = [line for block in blocks for line in block.splitlines() if line.strip()]
    assert len(lines) > 20
    assert [line for line in lines if line not in source] == ["# inferclub_example_engine.py"]
