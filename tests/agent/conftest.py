"""Fixtures of the agent tests: fakes of the engines the agent talks to. The fake hub and the
agent runner (`fake_hub`, `start_agent`) come from the `inferclub.testing` plugin."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fakes import FakeOllama, FakeVllm, FakeWhisperCpp


@pytest.fixture
def vllm() -> Iterator[FakeVllm]:
    with FakeVllm() as f:
        yield f


@pytest.fixture
def ollama() -> Iterator[FakeOllama]:
    with FakeOllama() as f:
        yield f


@pytest.fixture
def whispercpp() -> Iterator[FakeWhisperCpp]:
    with FakeWhisperCpp() as f:
        yield f
