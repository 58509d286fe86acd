"""`inference-club-agent check`, `detect` and `engines` as an operator runs them."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml

from inferclub.agent.detect import default_urls, nothing_found
from inferclub.engines import get_engines, get_plugin_manager
from inferclub.testing import manifest_text, run_cli
from tests.support.fakes import (
    FakeLlamaServer,
    FakeLmStudio,
    FakeOllama,
    FakeSpeaches,
    FakeVllm,
    FakeWhisperCpp,
)

pytestmark = pytest.mark.subprocess


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_check_prints_services_and_models(
    tmp_path: Path, vllm: FakeVllm, ollama: FakeOllama
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        manifest_text(
            {
                "name": "vllm-qwen",
                "engine": "vllm",
                "url": vllm.url,
                "models": [{"hf": "Qwen/Qwen3-8B", "alias": "qwen"}],
            },
            {"name": "ollama", "engine": "ollama", "url": ollama.url},
        )
    )
    result = run_cli("check", "--manifest", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{path}: valid, 1 host(s), 2 service(s); 2 up, 0 down",
        "",
        "host test-rig",
        f"  vllm-qwen: llm via vllm at {vllm.url}",
        "    status: up",
        "    models: qwen -> Qwen/Qwen3-8B",
        f"  ollama: llm via ollama at {ollama.url}",
        "    status: up",
        "    models: llama3.2:latest, qwen3:8b",
    ]


def test_check_reports_down_services_and_exits_1(tmp_path: Path, vllm: FakeVllm) -> None:
    port = closed_port()
    path = tmp_path / "m.yaml"
    path.write_text(
        manifest_text(
            {"name": "up", "engine": "vllm", "url": vllm.url},
            {"name": "down", "engine": "llamacpp", "url": f"http://127.0.0.1:{port}/v1"},
        )
    )
    result = run_cli("check", "--manifest", str(path), "--json")
    assert result.returncode == 1
    rows = {r["name"]: r for r in json.loads(result.stdout)["services"]}
    assert rows["up"]["up"] and rows["up"]["models"] == ["Qwen/Qwen3-8B"]
    assert not rows["down"]["up"]
    assert rows["down"]["detail"] == f"cannot connect to 127.0.0.1:{port} (connection refused)"
    # `check` never talks to a hub: it has no hub option at all.
    assert run_cli("check", "--manifest", str(path), "--hub", "http://x").returncode == 2


def test_detect_prints_a_manifest_that_check_accepts(tmp_path: Path) -> None:
    fakes = [
        FakeVllm(),
        FakeLmStudio(),
        FakeOllama(),
        FakeLlamaServer(),
        FakeSpeaches(),
        FakeWhisperCpp(),
    ]
    try:
        for fake in fakes:
            fake.start()
        args = [arg for f in fakes for arg in ("--url", f.root)]
        result = run_cli("detect", *args)
        assert result.returncode == 0, result.stderr
        doc = yaml.safe_load(result.stdout)
        services = doc["hosts"][0]["services"]
        assert [(s["name"], s["engine"], s.get("type", "llm")) for s in services] == [
            ("vllm", "vllm", "llm"),
            ("lmstudio", "lmstudio", "llm"),
            ("ollama", "ollama", "llm"),
            ("llamacpp", "llamacpp", "llm"),
            ("whisper", "whisper", "stt"),
            ("whisper-cpp", "whisper", "stt"),
        ]
        assert "#   ollama: llama3.2:latest, qwen3:8b" in result.stdout
        path = tmp_path / "detected.yaml"
        path.write_text(result.stdout)
        check = run_cli("check", "--manifest", str(path), "--json")
        assert check.returncode == 0, check.stdout + check.stderr
        rows = json.loads(check.stdout)["services"]
        assert all(r["up"] for r in rows)
    finally:
        for fake in fakes:
            fake.close()


def test_detect_with_nothing_running_exits_1_naming_where_it_looked() -> None:
    port = closed_port()
    result = run_cli("detect", "--probe", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert f"no engine found at 127.0.0.1:{port}." in result.stderr
    assert "inference-club-agent detect --probe HOST:PORT" in result.stderr
    assert result.stdout == ""


def test_detect_names_every_default_port_it_probes() -> None:
    message = nothing_found(default_urls(get_engines(get_plugin_manager()).values()))
    for port in (1234, 7878, 8000, 8080, 8103, 8880, 11434):
        assert f"127.0.0.1:{port}" in message


def test_engines_lists_builtins_and_plugins() -> None:
    result = run_cli("engines")
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == ["example", "llamacpp", "lmstudio", "ollama", "openai", "vllm", "whisper"]


def test_run_on_a_taken_address_names_it_and_the_option(tmp_path: Path, vllm: FakeVllm) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(manifest_text({"name": "chat", "engine": "vllm", "url": vllm.url}))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for option in ("--listen", "--metrics-listen"):
            args = ["--listen", "127.0.0.1:0", option, f"127.0.0.1:{port}"]
            result = run_cli(
                "run", "--manifest", str(path), "--hub", "http://127.0.0.1:9", "--key", "k", *args
            )
            assert result.returncode == 1, result.stderr
            assert f"cannot listen on 127.0.0.1:{port}" in result.stderr, result.stderr
            assert f"another address with {option}" in result.stderr
            assert "Errno" not in result.stderr
