"""Starting an agent as a newcomer does: a clean log when all is well, a clear error when the
callback address is taken."""

from __future__ import annotations

import socket
from pathlib import Path

import openai
import pytest

from inferclub.testing import manifest_text, run_cli
from tests.support.fakes import FakeVllm
from tests.support.hubproc import HubProcess
from tests.support.stack import start_agent_process, wait_models

pytestmark = pytest.mark.subprocess


def test_a_healthy_start_logs_no_error(
    hub_process: HubProcess, tmp_path: Path, vllm: FakeVllm
) -> None:
    key = hub_process.user_with_key("alice")
    service = {
        "name": "vllm",
        "engine": "vllm",
        "url": vllm.url,
        "models": [{"hf": "Qwen/Qwen3-8B", "alias": "qwen"}],
    }
    agent = start_agent_process(hub_process, key, tmp_path / "m.yaml", service)
    try:
        with openai.OpenAI(base_url=hub_process.api_base, api_key=key, max_retries=0) as sdk:
            wait_models(sdk, {"qwen"})
            sdk.chat.completions.create(model="qwen", messages=[{"role": "user", "content": "hi"}])
        # The hub's reachability check meets the agent before its first heartbeat reply:
        # the agent's 503 then is expected and must not read as a failure.
        agent.wait_log("callback URL")
    finally:
        agent.kill()
    assert " ERROR " not in agent.stderr, agent.stderr


def test_a_taken_listen_address_names_it_and_the_option(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        manifest_text({"name": "vllm", "engine": "vllm", "url": "http://127.0.0.1:9"})
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            "run",
            "--manifest",
            str(manifest),
            "--hub",
            "http://127.0.0.1:9",
            "--key",
            "ic_unused",
            "--listen",
            f"127.0.0.1:{port}",
        )
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr
    assert "already in use" in result.stderr and "--listen HOST:PORT" in result.stderr
    assert "Traceback" not in result.stderr
