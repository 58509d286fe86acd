"""`detect` and `check --deep` on the real engines the suite installs: the manifest detect
writes passes the deep check and serves every type through a real hub and agent.

The engines come from scripts/install-engines.sh; without them these tests skip (or fail when
INFERCLUB_REQUIRE_REAL_ENGINES=1, as `make test` sets).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import yaml

from inferclub.agent.deep import silence_wav
from inferclub.testing import AgentProcess, manifest_text, run_cli
from tests.support.hubproc import HubProcess
from tests.support.real_engines import (
    RunningEngine,
    embeddings_server,
    llama_server,
    tts_server,
    whisper_server,
)
from tests.support.stack import wait_models

pytestmark = [pytest.mark.real_engine, pytest.mark.subprocess, pytest.mark.timeout(400)]


@pytest.fixture(scope="module")
def four_engines() -> Iterator[dict[str, RunningEngine]]:
    with contextlib.ExitStack() as stack:
        yield {
            "llm": stack.enter_context(llama_server()),
            "stt": stack.enter_context(whisper_server()),
            "tts": stack.enter_context(tts_server()),
            "embedding": stack.enter_context(embeddings_server()),
        }


def detect(engines: dict[str, RunningEngine], path: Path) -> list[dict[str, object]]:
    probes = [arg for e in engines.values() for arg in ("--probe", f"127.0.0.1:{e.port}")]
    result = run_cli("detect", *probes)
    assert result.returncode == 0, result.stderr
    path.write_text(result.stdout)
    services: list[dict[str, object]] = yaml.safe_load(result.stdout)["hosts"][0]["services"]
    return services


def test_detect_tells_the_real_engines_apart(
    four_engines: dict[str, RunningEngine], tmp_path: Path
) -> None:
    services = detect(four_engines, tmp_path / "detected.yaml")
    by_type = {s["type"]: s for s in services}
    assert sorted(by_type) == ["embedding", "llm", "stt", "tts"]
    assert (by_type["llm"]["engine"], by_type["llm"]["url"]) == (
        "llamacpp",
        four_engines["llm"].base_url,
    )
    assert by_type["llm"]["models"] == [{"id": "smollm2-135m", "alias": "smollm2"}]
    # faster-whisper-server, not whisper.cpp: the OpenAI routes under /v1, no `api` option.
    assert by_type["stt"]["engine"] == "whisper" and "options" not in by_type["stt"]
    assert by_type["stt"]["url"] == four_engines["stt"].base_url
    assert (by_type["tts"]["engine"], by_type["tts"]["url"]) == (
        "openai",
        four_engines["tts"].base_url,
    )
    assert by_type["embedding"]["url"] == four_engines["embedding"].base_url


def test_the_detected_manifest_passes_check_deep_and_serves_every_type(
    four_engines: dict[str, RunningEngine], hub_process: HubProcess, tmp_path: Path
) -> None:
    path = tmp_path / "detected.yaml"
    detect(four_engines, path)
    check = run_cli("check", "--deep", "--manifest", str(path), timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count("request: ok") == 4, check.stdout

    key = hub_process.user_with_key("newcomer")
    agent = AgentProcess(
        ["run", "--manifest", str(path), "--hub", hub_process.url, "--key", key,
         "--listen", "127.0.0.1:0", "--heartbeat-interval", "1"]
    )  # fmt: skip
    try:
        agent.wait_listening()
        agent.wait_registered()
        with openai.OpenAI(
            base_url=hub_process.api_base, api_key=key, max_retries=0, timeout=120
        ) as sdk:
            wait_models(
                sdk, {"smollm2", "whisper-1", "tts-1", "tts-1-hd", "multilingual-e5-small-q4"}
            )
            stream = sdk.chat.completions.create(
                model="smollm2",
                messages=[{"role": "user", "content": "Say hi"}],
                max_tokens=8,
                stream=True,
            )
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            assert text.strip()
            heard = sdk.audio.transcriptions.create(
                model="whisper-1", file=("silence.wav", silence_wav()), temperature=0.0
            )
            assert isinstance(heard.text, str)
            speech = sdk.audio.speech.create(
                model="tts-1", voice="alloy", input="Hello", response_format="wav"
            )
            assert speech.content[:4] == b"RIFF"
            vector = sdk.embeddings.create(model="multilingual-e5-small-q4", input="hello")
            assert len(vector.data[0].embedding) == 384
    finally:
        agent.kill()


def test_check_deep_reports_a_service_of_the_wrong_type(
    four_engines: dict[str, RunningEngine], tmp_path: Path
) -> None:
    # What the old detect wrote for the Piper server: no `type:`, so a chat service.
    path = tmp_path / "wrong.yaml"
    path.write_text(
        manifest_text({"name": "tts", "engine": "openai", "url": four_engines["tts"].base_url})
    )
    plain = run_cli("check", "--manifest", str(path))
    assert plain.returncode == 0, "a health check alone cannot see it"
    deep = run_cli("check", "--deep", "--manifest", str(path))
    assert deep.returncode == 1
    assert "request: FAILED: /chat/completions with model 'tts-1': HTTP 405" in deep.stdout
    assert "1 failed a request" in deep.stdout
