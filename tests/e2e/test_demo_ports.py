"""Where `make demo` puts its engines: on their default ports when free, so that a later plain
`inference-club-agent detect` finds them; else on free ones, and it prints the `--probe`s."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path
from types import ModuleType

import pytest

DEMO = Path(__file__).resolve().parents[2] / "scripts" / "demo.py"


@pytest.fixture
def demo_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("inferclub_demo_script", DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_engine_gets_its_default_port_unless_something_listens_there(
    demo_script: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        monkeypatch.setitem(demo_script.DEFAULT_PORTS, "llama-server", taken)
        other = demo_script.port_for("llama-server")
        assert other != taken and 0 < other < 65536
    # Released: now it is the engine's.
    assert demo_script.port_for("llama-server") == taken


def test_the_demo_says_how_detect_finds_engines_off_their_default_ports(
    demo_script: ModuleType,
) -> None:
    defaults = list(demo_script.DEFAULT_PORTS.values())
    assert "detect` finds these engines" in demo_script.detect_hint(defaults)
    moved = demo_script.detect_hint([defaults[0], 40001, defaults[2]])
    assert "detect --probe 127.0.0.1:40001`" in moved
    assert f"127.0.0.1:{defaults[0]}" not in moved
