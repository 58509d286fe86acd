"""Fakes of local inference servers that reproduce the documented API shapes
(see the engine API notes the project follows). Each starts on 127.0.0.1, port 0."""

from tests.support.fakes.base import FakeServer, LoopThread, Recorded
from tests.support.fakes.images import FakeLocalAIImages, FakeSdCpp
from tests.support.fakes.llamacpp import FakeLlamaServer
from tests.support.fakes.lmstudio import FakeLmStudio
from tests.support.fakes.ollama import FakeOllama
from tests.support.fakes.speaches import FakeSpeaches
from tests.support.fakes.vllm import FakeVllm
from tests.support.fakes.whispercpp import FakeWhisperCpp

__all__ = [
    "FakeLlamaServer",
    "FakeLmStudio",
    "FakeLocalAIImages",
    "FakeOllama",
    "FakeSdCpp",
    "FakeServer",
    "FakeSpeaches",
    "FakeVllm",
    "FakeWhisperCpp",
    "LoopThread",
    "Recorded",
]
