"""The short aliases `detect` proposes for file-path, repo-style and sized model ids."""

from __future__ import annotations

import pytest

from inferclub.agent.detect import probe_url, propose_alias


@pytest.mark.parametrize(
    ("model_id", "alias"),
    [
        ("/models/SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2"),
        ("smollm2-135m", "smollm2"),
        ("Qwen/Qwen3-8B", "qwen3"),
        ("meta-llama/Llama-3.2-1B-Instruct", "llama-3.2"),
        ("Systran/faster-whisper-small", "faster-whisper-small"),
        ("/srv/models/phi.gguf", "phi"),
        ("llama3.2:latest", None),
        ("tts-1", None),
        ("multilingual-e5-small-q4", None),
    ],
)
def test_propose_alias(model_id: str, alias: str | None) -> None:
    assert propose_alias(model_id) == alias


def test_probe_addresses() -> None:
    assert probe_url("127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert probe_url("http://gpu-box:8000/") == "http://gpu-box:8000"
    with pytest.raises(ValueError, match="HOST:PORT"):
        probe_url("8080")
