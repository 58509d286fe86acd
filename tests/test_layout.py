"""The suite's own rules: helpers live in tests/support (one import root), conftest files define
only fixtures and hooks, and no two fixtures share a name, so a test's argument says which hub
it gets."""

from __future__ import annotations

import ast
import functools
import gc
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
#: The fixtures shipped to plugin authors count too: they are in every test's namespace.
SOURCES = sorted(TESTS.rglob("*.py")) + sorted((ROOT / "src/inferclub/testing").rglob("*.py"))


@functools.cache
def _tree(path: Path) -> ast.Module:
    # A syntax tree is a great many small objects, all alive until the parse ends: with the
    # collector on, the test process's whole heap (the SDK's thousands of classes) is walked
    # over and over meanwhile, ten times the parse itself.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(path.read_text(), str(path))
    finally:
        if was_enabled:
            gc.enable()


def _is_fixture(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for deco in node.decorator_list:
        target = deco.func if isinstance(deco, ast.Call) else deco
        if isinstance(target, ast.Attribute) and target.attr == "fixture":
            return True
    return False


def _functions(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def test_no_two_fixtures_share_a_name() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for path in SOURCES:
        for fn in _functions(_tree(path)):
            if _is_fixture(fn):
                where[fn.name].append(str(path.relative_to(ROOT)))
    assert "hub_process" in where and "fake_hub" in where, "the scan found the fixtures"
    # pytest-tornasync's `http_server` asks for a fixture named `app`: each in-process module
    # defines its own, by that contract.
    shared = {name: paths for name, paths in where.items() if len(paths) > 1 and name != "app"}
    assert shared == {}


def test_conftest_files_define_only_fixtures_and_hooks() -> None:
    conftests = sorted(TESTS.rglob("conftest.py"))
    assert conftests
    for path in conftests:
        for node in _tree(path).body:
            if isinstance(node, ast.ClassDef):
                raise AssertionError(f"{path.relative_to(ROOT)}: class {node.name} (a helper)")
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                ok = _is_fixture(node) or node.name.startswith("pytest_")
                assert ok, f"{path.relative_to(ROOT)}: {node.name} is a helper, not a fixture"


def test_tests_import_helpers_only_from_tests_support() -> None:
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests."):
                module = node.module or ""
                assert module.startswith("tests.support"), f"{path.relative_to(ROOT)}: {module}"
