"""Fake speaches (ex faster-whisper-server), after engine-apis.md §4.2 and §5: `/health` is
`{"message":"OK"}`, `/v1/models` lists installed models with their `task`, errors are FastAPI
`{"detail": ...}`.

`POST /v1/audio/speech` needs an installed text-to-speech `model` and a `voice`; `response_format`
defaults to mp3; the audio goes out in `audio_chunks` chunks `chunk_delay` apart, or, with
`stream_format: sse`, as `speech.audio.delta` events and a final `speech.audio.done` whose usage
is called `token_usage` (no `[DONE]`).
"""

from __future__ import annotations

import base64
from typing import Any

from tests.support.fakes.base import FakeHandler
from tests.support.fakes.openai_api import OpenAIFake, OpenAIHandler


class FakeSpeaches(OpenAIFake):
    def __init__(self) -> None:
        super().__init__(["Systran/faster-whisper-small", "speaches-ai/Kokoro-82M-v1.0-ONNX"])
        self.tasks = {
            "Systran/faster-whisper-small": "automatic-speech-recognition",
            "speaches-ai/Kokoro-82M-v1.0-ONNX": "text-to-speech",
        }
        #: Speech: the audio sent for any input, in this many chunks, `chunk_delay` apart.
        self.audio = b"RIFF" + (36 + 4000).to_bytes(4, "little") + b"WAVE" + bytes(range(250)) * 16
        self.audio_chunks = 4

    def model_list(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": m,
                    "created": 0,
                    "object": "model",
                    "owned_by": m.split("/")[0],
                    "language": ["en"],
                    "task": self.tasks[m],
                }
                for m in self.models
            ],
        }

    def model_error(self, model: str) -> tuple[int, Any]:
        return 404, {
            "detail": f"Model '{model}' is not installed locally. You can download the "
            "model using POST /v1/models"
        }

    def routes(self) -> list[Any]:
        args = {"fake": self}
        return [
            (r"/health", HealthHandler, args),
            (r"/v1/audio/transcriptions", TranscriptionHandler, args),
            (r"/v1/audio/speech", SpeechHandler, args),
            *self.openai_routes(),
        ]


class HealthHandler(FakeHandler):
    def get(self) -> None:
        self.send_json({"message": "OK"})


class TranscriptionHandler(OpenAIHandler):
    def post(self) -> None:
        if "file" not in self.request.files:
            self.send_json(
                {
                    "detail": [
                        {
                            "type": "missing",
                            "loc": ["body", "file"],
                            "msg": "Field required",
                            "input": None,
                        }
                    ]
                },
                422,
            )
            return
        model = self.get_body_argument("model", "")
        if not self.fake.knows(model):
            status, err = self.fake.model_error(model)
            self.send_json(err, status)
            return
        self.send_json({"text": "Hello from the fake speaches."})


SPEECH_TYPES = {
    "pcm": "audio/pcm",
    "mp3": "audio/mpeg",
    "wav": "audio/wav",
    "flac": "audio/flac",
    "opus": "audio/opus",
    "aac": "audio/aac",
}


class SpeechHandler(OpenAIHandler):
    fake: FakeSpeaches

    async def post(self) -> None:
        if self._finished:
            return
        fake = self.fake
        body = self.json_body()
        model = str(body.get("model", ""))
        missing = [f for f in ("model", "voice", "input") if not body.get(f)]
        if missing:
            self.send_json(
                {
                    "detail": [
                        {
                            "type": "missing",
                            "loc": ["body", f],
                            "msg": "Field required",
                            "input": None,
                        }
                        for f in missing
                    ]
                },
                422,
            )
            return
        if fake.tasks.get(model) != "text-to-speech":
            status, err = fake.model_error(model)
            self.send_json(err, status)
            return
        fmt = body.get("response_format", "mp3")
        if fmt not in SPEECH_TYPES:
            self.send_json({"detail": f"Unsupported response_format: {fmt}"}, 422)
            return
        audio = fake.audio
        step = -(-len(audio) // fake.audio_chunks)
        chunks = [audio[i : i + step] for i in range(0, len(audio), step)]
        if body.get("stream_format") == "sse":
            events: list[Any] = [
                {"type": "speech.audio.delta", "audio": base64.b64encode(c).decode()}
                for c in chunks
            ]
            events.append(
                {
                    "type": "speech.audio.done",
                    "token_usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
                }
            )
            await self.stream_events(events, fake.chunk_delay, fake.first_delay, done=False)
            return
        self.set_header("Content-Type", SPEECH_TYPES[fmt])
        await self.stream_bytes(chunks, fake.chunk_delay, fake.first_delay)
