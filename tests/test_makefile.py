"""`make run` sets up the hub alone; `make test` everything (checked with `make -n`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.subprocess,
    pytest.mark.skipif(shutil.which("make") is None, reason="no make"),
]


def dry_run(target: str, venv: Path) -> str:
    result = subprocess.run(
        ["make", "-n", "-C", str(ROOT), target, f"VENV={venv}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


def test_make_run_installs_only_the_hub(tmp_path: Path) -> None:
    out = dry_run("run", tmp_path / "venv")
    installs = [ln for ln in out.splitlines() if "pip install" in ln and "--upgrade pip" not in ln]
    assert installs == [f"{tmp_path / 'venv'}/bin/python -m pip install -q -e ."]
    assert "serve --quickstart" in out


def test_make_test_installs_the_extras_and_the_plugin(tmp_path: Path) -> None:
    out = dry_run("test", tmp_path / "venv")
    assert "-e '.[test,dev]' -e tests/plugins/example_engine" in out


def test_make_demo_installs_the_sdk_and_the_engines_not_the_test_tools(tmp_path: Path) -> None:
    out = dry_run("demo", tmp_path / "venv")
    assert "[test,dev]" not in out
    assert f"{tmp_path / 'venv'}/bin/python -m pip install -q -e '.[demo]'" in out
    assert "bash scripts/install-engines.sh llama stt tts" in out
    assert f"{tmp_path / 'venv'}/bin/python scripts/demo.py" in out


def test_make_test_installs_nftables_for_the_tunnel_tests(tmp_path: Path) -> None:
    out = dry_run("test", tmp_path / "venv")
    assert "test -x /usr/sbin/nft" in out and "apt-get install -y -q nftables" in out
