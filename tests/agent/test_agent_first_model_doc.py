"""docs/run-your-first-model.md and manifests/: every manifest is valid, every engine has a
section, and each section's command starts the engine where its manifest looks for it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from inferclub.agent.manifest import load_manifest
from inferclub.engines import get_engines, get_plugin_manager

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "run-your-first-model.md"
ENGINES = (
    "llama.cpp",
    "Ollama",
    "vLLM",
    "LM Studio",
    "faster-whisper-server",
    "speaches",
    "whisper.cpp",
    "Piper",
    "Kokoro",
)
#: Started from their own app or service, on their own default port.
OWN_PORT = ("Ollama", "LM Studio")
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def sections() -> dict[str, str]:
    parts = re.split(r"^### ", DOC.read_text(), flags=re.M)[1:]
    return {part.splitlines()[0]: part for part in parts}


def test_every_engine_has_a_section() -> None:
    titles = " ".join(sections())
    assert [e for e in ENGINES if e not in titles] == []


def test_readme_links_the_page() -> None:
    assert "docs/run-your-first-model.md" in (ROOT / "README.md").read_text()


def yaml_blocks() -> list[str]:
    return [text for lang, text in BLOCK.findall(DOC.read_text()) if lang == "yaml"]


@pytest.mark.parametrize("path", sorted((ROOT / "manifests").glob("*.yaml")), ids=str)
def test_example_manifests_are_valid(path: Path) -> None:
    load_manifest(path, get_engines(get_plugin_manager()))


@pytest.mark.parametrize("index", range(len(yaml_blocks())))
def test_the_pages_manifests_are_valid(index: int, tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(yaml_blocks()[index])
    load_manifest(path, get_engines(get_plugin_manager()))


@pytest.mark.parametrize("title", sorted(sections()))
def test_the_command_and_the_manifest_agree_on_the_port(title: str) -> None:
    blocks = BLOCK.findall(sections()[title])
    commands = " ".join(text for lang, text in blocks if lang == "bash")
    manifests = " ".join(text for lang, text in blocks if lang == "yaml")
    started = set(re.findall(r"--port (\d+)|-p (\d+):", commands))
    ports = {a or b for a, b in started}
    urls = set(re.findall(r"url: http://[\w.]+:(\d+)", manifests))
    if title in OWN_PORT:
        assert not ports
    else:
        assert ports == urls, f"{title}: started on {ports}, manifest looks at {urls}"
