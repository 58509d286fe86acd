"""Fake vLLM (`vllm serve`), after engine-apis.md §1.

- `GET /health` 200 with an empty body (503 when `dead`), `GET /version`;
- `/v1/models` cards with `owned_by: vllm`, `root`, `max_model_len`, `permission`;
- errors `{"error": {message, type: "NotFoundError", param, code: <int>}}`, or the old flat
  shape with `flat_errors`; a wrong key gets 401 `{"error": "Unauthorized"}` on /v1 paths only;
- streams end with a `choices: []` usage chunk whenever `stream_options` is present
  (vLLM's `include_usage` defaults to true), then `data: [DONE]`;
- `/v1/audio/transcriptions`: json and text both answer JSON `{"text", "usage"}`.
"""

from __future__ import annotations

import math
import time
from typing import Any

from tests.fakes.base import FakeHandler
from tests.fakes.openai_api import OpenAIFake, OpenAIHandler


class FakeVllm(OpenAIFake):
    def __init__(self, models: list[str] | None = None, api_key: str | None = None) -> None:
        super().__init__(models or ["Qwen/Qwen3-8B"], api_key)
        self.dead = False
        self.flat_errors = False
        self.transcript = "Hello from the fake vLLM."

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
                    "permission": [{"id": "modelperm-fake", "object": "model_permission",
                                    "created": now, "allow_create_engine": False,
                                    "allow_sampling": True, "allow_logprobs": True,
                                    "allow_search_indices": False, "allow_view": True,
                                    "allow_fine_tuning": False, "organization": "*",
                                    "group": None, "is_blocking": False}],
                }
                for m in self.models
            ],
        }

    def unauthorized(self) -> tuple[int, Any]:
        return 401, {"error": "Unauthorized"}

    def model_error(self, model: str) -> tuple[int, Any]:
        fields = {"message": f"The model `{model}` does not exist.", "type": "NotFoundError",
                  "param": None, "code": 404}
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
            (r"/v1/audio/transcriptions", TranscriptionHandler, args),
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

    def post(self) -> None:
        if self._finished:
            return
        files = self.request.files.get("file")
        if not files:
            self.send_json({"error": {"message": "file: Field required", "type": "BadRequestError",
                                      "param": None, "code": 400}}, 400)
            return
        fmt = self.get_body_argument("response_format", "json")
        if fmt not in ("json", "text", "verbose_json"):
            self.send_json({"error": {
                "message": "Currently only support response_format `text`, `json` or `verbose_json`",
                "type": "BadRequestError", "param": None, "code": 400}}, 400)
            return
        seconds = math.ceil(len(files[0]["body"]) / 32000) or 1
        self.send_json({"text": self.fake.transcript, "usage": {"type": "duration", "seconds": seconds}})
