"""Fakes of local inference servers that reproduce the documented API shapes
(see the engine API notes the project follows). Each starts on 127.0.0.1, port 0."""

from tests.fakes.base import FakeServer, LoopThread, Recorded
from tests.fakes.images import FakeLocalAIImages, FakeSdCpp
from tests.fakes.llamacpp import FakeLlamaServer
from tests.fakes.lmstudio import FakeLmStudio
from tests.fakes.ollama import FakeOllama
from tests.fakes.speaches import FakeSpeaches
from tests.fakes.vllm import FakeVllm
from tests.fakes.whispercpp import FakeWhisperCpp

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
