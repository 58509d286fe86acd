"""Run ``inference-club-agent`` as a subprocess, the way operators do, and watch its output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import yaml

EXE = Path(sys.executable).with_name("inference-club-agent")


def agent_command() -> list[str]:
    """The installed console script, or the module when only the package is importable."""
    return [str(EXE)] if EXE.exists() else [sys.executable, "-m", "inferclub.agent"]


class AgentProcess:
    """``inference-club-agent ARGS...`` with its stdout and stderr collected line by line."""

    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, prefix: Sequence[str] = ()
    ) -> None:
        """``prefix`` is a command the agent runs under, such as ``ip netns exec NAME``."""
        full_env = {**os.environ, **(env or {})}
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        # The agent pins hub keys in its state directory: a test's agent gets a fresh one, so
        # it never writes to the user's, nor trips over a key pinned by another test's hub.
        self._state = tempfile.TemporaryDirectory(prefix="inferclub-agent-state-")
        if not (env and "XDG_STATE_HOME" in env):
            full_env["XDG_STATE_HOME"] = self._state.name
        self.args = args
        self.proc = subprocess.Popen(
            [*prefix, *agent_command(), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._readers:
            t.start()
        #: ``http://host:port`` once `wait_listening` saw the agent print it.
        self.url = ""

    @staticmethod
    def _pump(stream: IO[str], sink: list[str]) -> None:
        for line in stream:
            sink.append(line.rstrip("\n"))

    @property
    def stdout(self) -> str:
        return "\n".join(self.out)

    @property
    def stderr(self) -> str:
        return "\n".join(self.err)

    @property
    def callback_url(self) -> str:
        """Where the hub reaches this agent when it listens on a specific address."""
        return self.url + "/v1"

    def wait_listening(self, timeout: float = 20) -> str:
        """The agent's URL, once it printed ``listening on URL``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.out:
                if line.startswith("listening on "):
                    self.url = line.split()[-1]
                    return self.url
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        raise AssertionError(f"agent did not start:\n{self.stdout}\n{self.stderr}")

    def wait_log(self, text: str, timeout: float = 10) -> str:
        """The first line of the agent's log (stderr) containing ``text``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.err:
                if text in line:
                    return line
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not logged within {timeout}s:\n{self.stderr}")

    def wait_registered(self, timeout: float = 15) -> None:
        """Until a heartbeat succeeded, i.e. the agent holds the hub key. (The hub records
        a beat just before the agent reads the answer, so the hub's view alone is racy.)"""
        self.wait_log("heartbeat accepted by the hub", timeout)

    def wait(self, timeout: float = 15) -> int:
        code = self.proc.wait(timeout)
        for t in self._readers:
            t.join(5)
        return code

    def terminate(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        self._state.cleanup()


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``inference-club-agent ARGS...`` to completion (``check``, ``detect``, ``engines``)."""
    return subprocess.run(
        [*agent_command(), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def manifest_text(*services: dict[str, Any], agent: dict[str, Any] | None = None) -> str:
    """A one-host manifest for these services."""
    doc: dict[str, Any] = {"hosts": [{"id": "test-rig", "services": list(services)}]}
    if agent:
        doc = {"agent": agent, **doc}
    return yaml.safe_dump(doc, sort_keys=False)


#: The `start_agent` fixture: start the agent CLI on services (or `manifest=` text).
StartAgent = Callable[..., AgentProcess]
