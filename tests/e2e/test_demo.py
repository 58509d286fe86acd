"""`make demo`'s script (scripts/demo.py) run as a newcomer runs it: real engines, detect,
check --deep, an agent, and a streamed answer, a speech file and its transcription through a
real hub -- the one already running, or one it starts itself."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.hubproc import HubProcess
from tests.support.real_engines import REQUIRE_ENV, free_port, installed

pytestmark = [pytest.mark.real_engine, pytest.mark.subprocess, pytest.mark.timeout(400)]

DEMO = Path(__file__).resolve().parents[2] / "scripts" / "demo.py"


@pytest.fixture
def demo_engines() -> None:
    missing = [kind for kind in ("llama", "stt", "tts") if installed(kind) is None]
    if missing and os.environ.get(REQUIRE_ENV) != "1":
        pytest.skip(f"real engines {missing} not installed: run scripts/install-engines.sh")


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "INFERCLUB_API_KEY"}
    return subprocess.run(
        [sys.executable, str(DEMO), "--once", *args],
        capture_output=True,
        text=True,
        timeout=360,
        env=env,
        check=False,
    )


@pytest.mark.usefixtures("demo_engines")
def test_demo_against_the_running_hub_then_again(hub_process: HubProcess, tmp_path: Path) -> None:
    hub_process.user_with_key("newcomer")  # what `make run`'s quickstart leaves behind
    result = run_demo(
        "--hub", hub_process.url, "--db", str(hub_process.db), "--state-dir", str(tmp_path)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "3 up, 0 down; 0 failed a request" in out
    # whisper tiny.en hears Piper's "Hello world" back (punctuation and case may vary).
    assert "transcription: hello world" in out.lower()
    assert (tmp_path / "speech.wav").read_bytes()[:4] == b"RIFF"
    key = printed_key(out)
    assert key.startswith("ic_")
    # The SDK lines it printed (whose "transcription:" line is above) are whole Python.
    printed = sdk_lines_in(out)
    assert f'client = OpenAI(base_url="{hub_process.url}/v1", api_key="{key}")' in printed
    assert 'model="smollm2",' in printed and "transcription:" in printed
    compile(printed, "<printed>", "exec")
    # The engines were on their default ports, or `detect` is told where they are.
    assert "detect` finds these engines" in out or "detect --probe 127.0.0.1:" in out

    # Run again on the same hub (a second test of its own ran the whole demo a third time for
    # this, about 20 s of real engines). Each run makes a new key; the provider name the first
    # run's key registered must not stop the second run's agent (409 provider_name_taken,
    # exit 5).
    again = run_demo(
        "--hub", hub_process.url, "--db", str(hub_process.db), "--state-dir", str(tmp_path / "2")
    )
    assert again.returncode == 0, f"second run:\n{again.stdout}{again.stderr}"
    assert "transcription: hello world" in again.stdout.lower()
    assert printed_key(again.stdout) != key


def printed_key(out: str) -> str:
    """The key the demo made and printed in its SDK lines."""
    return next(
        ln.split('api_key="')[1].split('"')[0] for ln in out.splitlines() if "api_key=" in ln
    )


def sdk_lines_in(out: str) -> str:
    """The indented block the demo printed after "These OpenAI SDK lines work now"."""
    lines = out.split("the demo runs them as they are:\n\n", 1)[1].splitlines()
    block = itertools.takewhile(lambda ln: ln.startswith("    ") or not ln, lines)
    return textwrap.dedent("\n".join(block))


@pytest.mark.usefixtures("demo_engines")
def test_demo_starts_its_own_hub_when_none_answers(tmp_path: Path) -> None:
    hub = f"http://127.0.0.1:{free_port()}"
    result = run_demo("--hub", hub, "--state-dir", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"no hub answers at {hub}: starting one" in result.stdout
    assert "transcription: hello world" in result.stdout.lower()
