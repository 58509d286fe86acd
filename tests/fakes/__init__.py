"""Fakes of local inference servers that reproduce the documented API shapes
(see the engine API notes the project follows). Each starts on 127.0.0.1, port 0."""

from fakes.base import FakeServer, LoopThread, Recorded
from fakes.llamacpp import FakeLlamaServer
from fakes.lmstudio import FakeLmStudio
from fakes.ollama import FakeOllama
from fakes.speaches import FakeSpeaches
from fakes.vllm import FakeVllm
from fakes.whispercpp import FakeWhisperCpp

__all__ = [
    "FakeLlamaServer",
    "FakeLmStudio",
    "FakeOllama",
    "FakeServer",
    "FakeSpeaches",
    "FakeVllm",
    "FakeWhisperCpp",
    "LoopThread",
    "Recorded",
]
