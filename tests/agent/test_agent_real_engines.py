"""End to end with real engines: openai SDK -> hub -> agent -> llama-server / faster-whisper.

The engines come from scripts/install-engines.sh; without them these tests skip (or fail when
INFERCLUB_REQUIRE_REAL_ENGINES=1, as `make test` sets).
"""

from __future__ import annotations

import io
import wave
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from inferclub.testing import AgentProcess, manifest_text, run_cli
from tests.support.hubproc import HubProcess
from tests.support.real_engines import RunningEngine, llama_server, whisper_server
from tests.support.stack import start_agent_process, wait_models

pytestmark = [pytest.mark.real_engine, pytest.mark.subprocess]


@pytest.fixture(scope="module")
def llama_engine() -> Iterator[RunningEngine]:
    with llama_server() as engine:
        yield engine


def test_check_sees_the_real_llama_server(llama_engine: RunningEngine, tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        manifest_text({"name": "llama", "engine": "llamacpp", "url": llama_engine.base_url})
    )
    result = run_cli("check", "--manifest", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"models: {llama_engine.model}" in result.stdout


def test_chat_through_hub_and_agent_to_llama_server(
    llama_engine: RunningEngine, hub_process: HubProcess, tmp_path: Path
) -> None:
    key = hub_process.user_with_key("alice")
    # No `models:`: the agent discovers what llama-server serves.
    agent = start_agent_process(
        hub_process,
        key,
        tmp_path / "m.yaml",
        {"name": "llama", "engine": "llamacpp", "url": llama_engine.base_url},
    )
    try:
        with openai.OpenAI(
            base_url=hub_process.api_base, api_key=key, max_retries=0, timeout=60
        ) as sdk:
            wait_models(sdk, {llama_engine.model})
            messages = [{"role": "user", "content": "What is the capital of France?"}]
            reply = sdk.chat.completions.create(
                model=llama_engine.model,
                messages=messages,
                max_tokens=16,
                temperature=0,  # type: ignore[arg-type]
            )
            assert reply.choices[0].message.content
            assert reply.usage is not None and reply.usage.completion_tokens > 0

            stream = sdk.chat.completions.create(
                model=llama_engine.model,
                messages=messages,
                max_tokens=16,
                temperature=0,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = list(stream)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text.strip()
            assert sum(1 for c in chunks if c.choices) > 2  # really streamed, not one blob
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
            # At temperature 0 the streamed answer is the same as the plain one.
            assert text == reply.choices[0].message.content

        rows = hub_process.wait_for_request_rows(2)
        assert [(r["status"], r["service"], r["model"]) for r in rows] == [
            (200, "llama", llama_engine.model),
            (200, "llama", llama_engine.model),
        ]
        assert all(r["prompt_tokens"] and r["completion_tokens"] for r in rows)
        assert rows[1]["completion_tokens"] == chunks[-1].usage.completion_tokens
    finally:
        agent.kill()


def test_responses_through_hub_and_agent_to_llama_server(
    llama_engine: RunningEngine, hub_process: HubProcess, tmp_path: Path
) -> None:
    """llama-server serves OpenAI's Responses API: whole, and streamed as named events whose
    last, ``response.completed``, carries the usage the hub records."""
    key = hub_process.user_with_key("dave")
    agent = start_agent_process(
        hub_process,
        key,
        tmp_path / "m.yaml",
        {"name": "llama", "engine": "llamacpp", "url": llama_engine.base_url},
    )
    try:
        with openai.OpenAI(
            base_url=hub_process.api_base, api_key=key, max_retries=0, timeout=60
        ) as sdk:
            wait_models(sdk, {llama_engine.model})
            whole = sdk.responses.create(
                model=llama_engine.model, input="Say hi", max_output_tokens=8, temperature=0
            )
            assert whole.output_text and whole.usage is not None
            events = list(
                sdk.responses.create(
                    model=llama_engine.model,
                    input="Say hi",
                    max_output_tokens=8,
                    temperature=0,
                    stream=True,
                )
            )
        assert events[-1].type == "response.completed"
        deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
        assert len(deltas) > 1 and "".join(deltas) == whole.output_text
        usage = events[-1].response.usage
        assert usage is not None
        rows = hub_process.wait_for_request_rows(2)
        assert [(r["endpoint"], r["status"]) for r in rows] == [("/v1/responses", 200)] * 2
        assert (rows[0]["prompt_tokens"], rows[0]["completion_tokens"]) == (
            whole.usage.input_tokens,
            whole.usage.output_tokens,
        )
        assert rows[1]["completion_tokens"] == usage.output_tokens
    finally:
        agent.kill()


def silent_wav(seconds: float = 1.0, rate: int = 16000) -> bytes:
    """A second of silence: decoded in seconds. A tone made whisper write "beep beep ..." up
    to its token limit, more than a minute of CPU (two under load), for the same proof."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"\x00\x00" * int(rate * seconds))
    return buf.getvalue()


def test_transcription_through_hub_and_agent_to_faster_whisper(
    hub_process: HubProcess, tmp_path: Path
) -> None:
    with whisper_server() as engine:
        key = hub_process.user_with_key("erin")
        agent: AgentProcess = start_agent_process(
            hub_process,
            key,
            tmp_path / "m.yaml",
            {
                "name": "whisper",
                "type": "stt",
                "engine": "whisper",
                "url": engine.base_url,
                "models": [{"id": engine.model}],
            },
        )
        try:
            with openai.OpenAI(
                base_url=hub_process.api_base, api_key=key, max_retries=0, timeout=120
            ) as sdk:
                wait_models(sdk, {engine.model})
                # temperature=0: no fallback decoding at higher temperatures.
                result = sdk.audio.transcriptions.create(
                    model=engine.model, file=("silence.wav", silent_wav()), temperature=0.0
                )
                assert isinstance(result.text, str)
        finally:
            agent.kill()
