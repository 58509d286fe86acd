"""Fake speaches (ex faster-whisper-server), after engine-apis.md §4.2: `/health` is
`{"message":"OK"}`, `/v1/models` lists installed models with their `task`, errors are FastAPI
`{"detail": ...}`."""

from __future__ import annotations

from typing import Any

from tests.fakes.base import FakeHandler
from tests.fakes.openai_api import OpenAIFake, OpenAIHandler


class FakeSpeaches(OpenAIFake):
    def __init__(self) -> None:
        super().__init__(["Systran/faster-whisper-small", "speaches-ai/Kokoro-82M-v1.0-ONNX"])
        self.tasks = {"Systran/faster-whisper-small": "automatic-speech-recognition",
                      "speaches-ai/Kokoro-82M-v1.0-ONNX": "text-to-speech"}

    def model_list(self) -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": m, "created": 0, "object": "model", "owned_by": m.split("/")[0],
             "language": ["en"], "task": self.tasks[m]} for m in self.models]}

    def model_error(self, model: str) -> tuple[int, Any]:
        return 404, {"detail": f"Model '{model}' is not installed locally. You can download the "
                               "model using POST /v1/models"}

    def routes(self) -> list[Any]:
        args = {"fake": self}
        return [(r"/health", HealthHandler, args),
                (r"/v1/audio/transcriptions", TranscriptionHandler, args),
                *self.openai_routes()]


class HealthHandler(FakeHandler):
    def get(self) -> None:
        self.send_json({"message": "OK"})


class TranscriptionHandler(OpenAIHandler):
    def post(self) -> None:
        if "file" not in self.request.files:
            self.send_json({"detail": [{"type": "missing", "loc": ["body", "file"],
                                        "msg": "Field required", "input": None}]}, 422)
            return
        model = self.get_body_argument("model", "")
        if not self.fake.knows(model):
            status, err = self.fake.model_error(model)
            self.send_json(err, status)
            return
        self.send_json({"text": "Hello from the fake speaches."})
