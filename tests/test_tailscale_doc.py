"""docs/tailscale.md is checked against the code: its hub settings load with the real settings
loader and admit the agent's tailnet address (which a public hub's default refuses), its
manifest validates with the real manifest loader, and every setting, variable and flag it names
exists."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from inferclub.agent import cli as agent_cli
from inferclub.agent.manifest import parse_manifest
from inferclub.engines import get_engines, get_plugin_manager
from inferclub.hub import cli
from inferclub.hub.callback_policy import CallbackRefused, policy_for
from inferclub.hub.config import Settings, load_settings, setting_names

DOC = Path(__file__).resolve().parents[1] / "docs" / "tailscale.md"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def blocks(language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(DOC.read_text()) if lang == language]


def one_block(language: str, containing: str) -> str:
    (found,) = [b for b in blocks(language) if containing in b]
    return found


def hub_settings(tmp_path: Path) -> Settings:
    path = tmp_path / "hub.yaml"
    path.write_text(one_block("yaml", "callback_networks:"))
    return load_settings({"config": str(path)}, env={})


def manifest_agent_host() -> str:
    text = one_block("yaml", "hosts:")
    manifest = parse_manifest(text, "tailscale.md", get_engines(get_plugin_manager()))
    assert manifest.agent.callback_url is not None and manifest.agent.listen is not None
    host = urlsplit(manifest.agent.callback_url).hostname or ""
    assert manifest.agent.listen.startswith(f"{host}:"), "listen and callback_url differ"
    return host


def test_the_hub_settings_admit_the_agents_tailnet_address(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path)
    policy = policy_for(settings.public_url, settings.callback_networks)
    host = manifest_agent_host()
    assert policy.check(host).category == "private"
    # Only the tailnet's range: the rest of the hub's private network stays refused.
    with pytest.raises(CallbackRefused):
        policy.check("192.168.1.10")


def test_a_public_hubs_default_refuses_the_tailnet(tmp_path: Path) -> None:
    settings = hub_settings(tmp_path)
    with pytest.raises(CallbackRefused):
        policy_for(settings.public_url, "").check(manifest_agent_host())


def test_the_environment_example_says_the_same_as_the_file(tmp_path: Path) -> None:
    block = one_block("sh", "INFERCLUB_CALLBACK_NETWORKS")
    words = shlex.split(block.replace("\\\n", " "))
    env = dict(w.split("=", 1) for w in words if re.match(r"INFERCLUB_\w+=", w))
    from_env = load_settings({}, env=env)
    from_file = hub_settings(tmp_path)
    assert (from_env.public_url, from_env.callback_networks) == (
        from_file.public_url,
        from_file.callback_networks,
    )


def subcommand_flags(parser: argparse.ArgumentParser, command: str) -> set[str]:
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {f for a in commands.choices[command]._actions for f in a.option_strings}


def test_every_agent_command_and_flag_named_exists() -> None:
    parser = agent_cli.build_parser()
    flagged = r"inference-club-agent (\w+)((?: --[a-z-]+(?: [^`\s-][^`\s]*)?)*)"
    used = re.findall(flagged, DOC.read_text())
    assert {command for command, _ in used} >= {"run", "check"}
    for command, rest in used:
        for flag in re.findall(r"--[a-z-]+", rest):
            assert flag in subcommand_flags(parser, command), (command, flag)


def test_the_tunnel_alternative_is_a_manifest_field() -> None:
    assert "`tunnel: true` in the manifest's\n  `agent:` section" in DOC.read_text()
    text = one_block("yaml", "hosts:").replace("agent:\n", "agent:\n  tunnel: true\n", 1)
    manifest = parse_manifest(text, "tailscale.md", get_engines(get_plugin_manager()))
    assert manifest.agent.tunnel is True


def test_every_setting_variable_and_serve_flag_named_exists() -> None:
    text = DOC.read_text()
    names = set(setting_names())
    for var in set(re.findall(r"INFERCLUB_([A-Z_]+)", text)) - {"API_KEY"}:
        assert var.lower() in names, var
    flags = subcommand_flags(cli.build_parser(), "serve")
    for line in re.findall(r"^.*inferclub serve .*$", text, re.M):
        for flag in re.findall(r"(--[a-z-]+)", line):
            assert flag in flags, flag
