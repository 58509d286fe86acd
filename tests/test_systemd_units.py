"""contrib/systemd: the example units parse, `systemd-analyze verify` accepts them (where it is
installed), and their ExecStart lines use real options of the real commands."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from inferclub.agent import cli as agent_cli
from inferclub.hub import cli as hub_cli

ROOT = Path(__file__).resolve().parents[1]
UNITS = sorted((ROOT / "contrib" / "systemd").glob("*.service"))
INSTALLED_BIN = "/opt/inferclub/bin/"
PARSERS = {"inferclub": hub_cli.build_parser, "inference-club-agent": agent_cli.build_parser}


def unit(path: Path) -> configparser.ConfigParser:
    # systemd allows repeated keys (Environment=); the last one is enough here.
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def test_there_is_a_unit_for_the_hub_and_the_agent() -> None:
    assert [p.name for p in UNITS] == ["inferclub.service", "inference-club-agent.service"]


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_execstart_is_a_valid_command_line(path: Path) -> None:
    argv = shlex.split(unit(path)["Service"]["ExecStart"])
    assert argv[0].startswith(INSTALLED_BIN)
    program = argv[0].removeprefix(INSTALLED_BIN)
    args = PARSERS[program]().parse_args(argv[1:])  # exits (fails) on an unknown option
    assert args.command in ("serve", "run")


@pytest.mark.subprocess
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify_accepts_it(path: Path, tmp_path: Path) -> None:
    # verify checks that ExecStart is executable: point it at this checkout's venv.
    venv_bin = str(Path(sys.executable).parent) + "/"
    copy = tmp_path / path.name
    copy.write_text(path.read_text().replace(INSTALLED_BIN, venv_bin))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
