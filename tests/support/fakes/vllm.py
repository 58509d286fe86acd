"""Fake vLLM (`vllm serve`), after engine-apis.md §1.

- `GET /health` 200 with an empty body (503 when `dead`), `GET /version`;
- `/v1/models` cards with `owned_by: vllm`, `root`, `max_model_len`, `permission`;
- errors `{"error": {message, type: "NotFoundError", param, code: <int>}}`, or the old flat
  shape with `flat_errors`; a wrong key gets 401 `{"error": "Unauthorized"}` on /v1 paths only;
- streams end with a `choices: []` usage chunk whenever `stream_options` is present
  (vLLM's `include_usage` defaults to true), then `data: [DONE]`;
- `/v1/audio/transcriptions` and `/translations` (§1.7, §1.8): only json, text and
  verbose_json; json and text both answer JSON `{"text", "usage"}` (translations: no usage);
  `verbose_json` only for Whisper models (`timestamps=True`), with a *string* `duration`, the
  request's `language` echoed, segments, `words: null` (granularities ignored), no `task`;
  otherwise (Qwen3-ASR) a 400, as for verbose_json with `stream`. `stream=true` sends chat-style
  `transcription.chunk` events (Qwen3-ASR deltas keep their `language X<asr_text>` prefix), a
  `choices: []` usage chunk with `stream_include_usage`, then `data: [DONE]`.
"""

from __future__ import annotations

import math
import time
from typing import Any

from tornado.httputil import HTTPFile

from tests.support.fakes.base import FakeHandler
from tests.support.fakes.openai_api import OpenAIFake, OpenAIHandler


class FakeVllm(OpenAIFake):
    def __init__(
        self, models: list[str] | None = None, api_key: str | None = None, timestamps: bool = False
    ) -> None:
        super().__init__(models or ["Qwen/Qwen3-8B"], api_key)
        self.dead = False
        self.flat_errors = False
        self.transcript = "Hello from the fake vLLM."
        #: A Whisper model (`supports_segment_timestamp`); False is Qwen3-ASR-like.
        self.timestamps = timestamps

    def model_list(self) -> dict[str, Any]:
        now = int(time.time())
        return {
            "object": "list",
            "data": [
                {
                    "id": m,
                    "object": "model",
                    "created": now,
                    "owned_by": "vllm",
                    "root": m,
                    "parent": None,
                    "max_model_len": 32768,
                    "permission": [
                        {
                            "id": "modelperm-fake",
                            "object": "model_permission",
                            "created": now,
                            "allow_create_engine": False,
                            "allow_sampling": True,
                            "allow_logprobs": True,
                            "allow_search_indices": False,
                            "allow_view": True,
                            "allow_fine_tuning": False,
                            "organization": "*",
                            "group": None,
                            "is_blocking": False,
                        }
                    ],
                }
                for m in self.models
            ],
        }

    def unauthorized(self) -> tuple[int, Any]:
        return 401, {"error": "Unauthorized"}

    def model_error(self, model: str) -> tuple[int, Any]:
        fields = {
            "message": f"The model `{model}` does not exist.",
            "type": "NotFoundError",
            "param": None,
            "code": 404,
        }
        if self.flat_errors:
            return 404, {"object": "error", **fields}
        return 404, {"error": fields}

    def include_usage(self, body: dict[str, Any]) -> bool:
        opts = body.get("stream_options")
        return isinstance(opts, dict) and opts.get("include_usage", True) is not False

    def routes(self) -> list[Any]:
        args = {"fake": self}
        return [
            (r"/health", HealthHandler, args),
            (r"/version", VersionHandler, args),
            (r"/v1/audio/(transcriptions|translations)", TranscriptionHandler, args),
            *self.openai_routes(),
        ]


class HealthHandler(FakeHandler):
    fake: FakeVllm

    def get(self) -> None:
        self.set_status(503 if self.fake.dead else 200)
        self.finish()


class VersionHandler(FakeHandler):
    def get(self) -> None:
        self.send_json({"version": "0.11.0"})


class TranscriptionHandler(OpenAIHandler):
    fake: FakeVllm

    def bad_request(self, message: str) -> None:
        self.send_json(
            {"error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}},
            400,
        )

    async def post(self, kind: str) -> None:
        if self._finished:
            return
        fake = self.fake
        files = self.request.files.get("file")
        if not files:
            self.bad_request("file: Field required")
            return
        model = self.get_body_argument("model", "") or fake.models[0]
        if not fake.knows(model):
            status, err = fake.model_error(model)
            self.send_json(err, status)
            return
        fmt = self.get_body_argument("response_format", "json")
        stream = self.get_body_argument("stream", "false").lower() == "true"
        if fmt not in ("json", "text", "verbose_json"):
            self.bad_request(
                "Currently only support response_format `text`, `json` or `verbose_json`"
            )
            return
        if fmt == "verbose_json" and not fake.timestamps:
            self.bad_request(f"Currently do not support verbose_json for {model}")
            return
        if fmt == "verbose_json" and stream:
            self.bad_request("verbose_json format doesn't support streaming case")
            return
        seconds = self.seconds(files[0])
        if stream:
            await self.stream(kind, model, seconds)
        elif fmt == "verbose_json":
            self.send_json(self.verbose(seconds))
        elif kind == "translations":
            self.send_json({"text": fake.transcript})
        else:
            self.send_json(
                {
                    "text": fake.transcript,
                    "usage": {"type": "duration", "seconds": math.ceil(seconds)},
                }
            )

    @staticmethod
    def seconds(upload: HTTPFile) -> float:
        """The audio length: from a WAV header when there is one, else 16 kHz 16-bit mono."""
        body = upload["body"]
        if body[:4] == b"RIFF" and body[8:12] == b"WAVE" and len(body) >= 44:
            rate = int.from_bytes(body[24:28], "little")
            block = int.from_bytes(body[32:34], "little") or 1
            return round((len(body) - 44) / block / (rate or 16000), 3)
        return round(len(body) / 32000, 3) or 1.0

    def verbose(self, seconds: float) -> dict[str, Any]:
        text = self.fake.transcript
        return {
            "duration": str(seconds),
            "language": self.get_body_argument("language", None),
            "text": text,
            "segments": [
                {
                    "id": 0,
                    "avg_logprob": -0.25,
                    "compression_ratio": 1.1,
                    "end": seconds,
                    "no_speech_prob": None,
                    "seek": 0,
                    "start": 0.0,
                    "temperature": 0.0,
                    "text": text,
                    "tokens": [50364, 2425, 490, 50564],
                }
            ],
            "words": None,
        }

    async def stream(self, kind: str, model: str, seconds: float) -> None:
        fake = self.fake
        obj = "translation.chunk" if kind == "translations" else "transcription.chunk"
        pieces = [w + " " for w in fake.transcript.split()]
        pieces[-1] = pieces[-1].rstrip()
        if not fake.timestamps:
            pieces = ["language English", "<asr_text>" + pieces[0], *pieces[1:]]

        def chunk(choices: list[Any], **extra: Any) -> dict[str, Any]:
            return {
                "id": "trsc-fake",
                "object": obj,
                "created": int(time.time()),
                "model": model,
                "choices": choices,
                **extra,
            }

        events = [
            chunk([{"delta": {"content": p}, "finish_reason": None, "stop_reason": None}])
            for p in pieces
        ]
        events.append(chunk([{"delta": {}, "finish_reason": "stop", "stop_reason": None}]))
        if self.get_body_argument("stream_include_usage", "false").lower() == "true":
            events.append(
                chunk(
                    [],
                    usage={
                        "prompt_tokens": math.ceil(seconds) * 50,
                        "completion_tokens": len(pieces),
                        "total_tokens": math.ceil(seconds) * 50 + len(pieces),
                    },
                )
            )
        await self.stream_events(events, fake.chunk_delay, fake.first_delay)
