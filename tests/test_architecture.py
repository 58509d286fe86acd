"""ARCHITECTURE.md names only modules that exist: every ``src/inferclub/...py`` path, every
dotted ``inferclub.x.y`` module and every entry of its module map."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "ARCHITECTURE.md"


def module_map(text: str) -> list[str]:
    """The paths of the module-map tree: the code block that starts with ``src/inferclub/``,
    two spaces of indentation per level, a trailing ``/`` for directories."""
    block = re.search(r"```\n(src/inferclub/\n.*?)```", text, re.S)
    assert block, "ARCHITECTURE.md has no module map starting with `src/inferclub/`"
    lines = block.group(1).splitlines()
    parents: list[str] = []
    paths = []
    for line in lines:
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        del parents[depth:]
        paths.append("".join(parents) + name)
        if name.endswith("/"):
            parents.append(name)
    return paths


def named_paths(text: str) -> list[str]:
    """Every module the prose names, as a path under the repository root."""
    paths = re.findall(r"src/inferclub/[\w/]*\w\.py", text)
    for dotted in re.findall(r"`(inferclub(?:\.\w+)*)`", text):
        base = "src/" + dotted.replace(".", "/")
        paths.append(base + "/" if (ROOT / base).is_dir() else base + ".py")
    return paths


def missing(paths: list[str]) -> list[str]:
    def exists(path: str) -> bool:
        return (ROOT / path).is_dir() if path.endswith("/") else (ROOT / path).is_file()

    return sorted({p for p in paths if not exists(p)})


def test_the_module_map_parses() -> None:
    paths = module_map(ARCHITECTURE.read_text())
    assert "src/inferclub/hub/routing.py" in paths
    assert "src/inferclub/engines/builtin/vllm.py" in paths


def test_every_module_in_the_map_exists() -> None:
    gone = missing(module_map(ARCHITECTURE.read_text()))
    assert not gone, f"ARCHITECTURE.md's module map names paths that do not exist: {gone}"


def test_every_module_the_text_names_exists() -> None:
    gone = missing(named_paths(ARCHITECTURE.read_text()))
    assert not gone, f"ARCHITECTURE.md names modules that do not exist: {gone}"


def test_every_module_of_the_package_is_in_the_map() -> None:
    mapped = set(module_map(ARCHITECTURE.read_text()))
    package = ROOT / "src" / "inferclub"
    modules = {str(p.relative_to(ROOT)) for p in package.rglob("*.py")}
    unmapped = sorted(modules - mapped)
    assert not unmapped, f"modules missing from ARCHITECTURE.md's module map: {unmapped}"
