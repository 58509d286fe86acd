"""The manual (docs/) documents every setting, endpoint and hub command the code has, its
generated configuration reference is current, and its links resolve."""

from __future__ import annotations

import argparse
import re
from dataclasses import fields
from pathlib import Path

import pytest

from inferclub import wire
from inferclub.hub import cli
from inferclub.hub.config import Settings, setting_names
from inferclub.hub.handlers import agent as agent_handlers
from inferclub.hub.handlers import openai as openai_handlers

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
REGENERATE = ".venv/bin/inferclub config docs > docs/configuration.md"


def doc(name: str) -> str:
    return (DOCS / name).read_text()


def test_configuration_reference_is_current(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "docs"]) == 0
    printed = capsys.readouterr().out
    assert printed == doc("configuration.md"), (
        f"docs/configuration.md is not what `inferclub config docs` prints; run `{REGENERATE}`"
    )


@pytest.mark.parametrize("name", setting_names())
def test_every_setting_is_documented(name: str) -> None:
    help_text = next(f.metadata.get("help", "") for f in fields(Settings) if f.name == name)
    assert help_text.strip(), f"setting {name!r} has no help metadata in hub/config.py"
    row = f"| `{name}` |"
    assert row in doc("configuration.md") and f"`INFERCLUB_{name.upper()}`" in doc(
        "configuration.md"
    )


def test_every_endpoint_is_documented() -> None:
    text = doc("api.md")
    for pattern, _ in openai_handlers.routes + agent_handlers.routes:
        path = pattern.replace("(.+)", "{id}")
        assert path in text, path
    assert "/v1/agent/heartbeat" in doc("protocol.md")


def test_every_hub_command_and_option_is_documented() -> None:
    parser = cli.build_parser()
    text = doc("operations.md")
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command, subparser in commands.choices.items():
        actions = [a for a in subparser._actions if isinstance(a, argparse._SubParsersAction)]
        leaves = actions[0].choices.items() if actions else [("", subparser)]
        for action, leaf in leaves:
            line = f"inferclub {command} {action}".strip()
            assert line in text, line
            # The synopsis lines of this command (the block at the top of operations.md); the
            # common --db and --config are said once under it.
            synopsis = " ".join(s for s in text.splitlines() if s.startswith(line + " "))
            for option in leaf._actions:
                for flag in option.option_strings:
                    if flag not in ("-h", "--help", "--db", "--config"):
                        assert flag in synopsis, (line, flag)


def test_every_heartbeat_field_is_documented() -> None:
    """protocol.md's field tables follow the dataclasses the hub parses and the agent builds."""
    text = doc("protocol.md")
    for f in fields(wire.Heartbeat):
        assert f"| `{f.name}` |" in text, f.name
    for f in fields(wire.AdvertisedService):
        # `detail` is only sent for a service that is down: the `down` row says so.
        row = "| `down` |" if f.name == "detail" else f"| `services[].{f.name}` |"
        assert row in text, f.name
    assert "`detail`" in text
    for f in fields(wire.HeartbeatReply):
        assert f"`{f.name}`" in text, f.name


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
        assert f"`{name}" in doc("plugin-tutorial.md"), name


def markdown_files() -> list[Path]:
    return [
        ROOT / "README.md",
        ROOT / "ARCHITECTURE.md",
        ROOT / "bench" / "README.md",
        *sorted(DOCS.glob("*.md")),
    ]


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    text = page.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: broken link {target}"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved.read_text()), f"{page.name}: no anchor {target}"


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found
