"""Fake llama.cpp `llama-server`: `/health` `{"status":"ok"}` (503 while loading), models owned
by `llamacpp`, OpenAI chat/completions with usage in every response."""

from __future__ import annotations

import time
from typing import Any

from tests.support.fakes.base import FakeHandler
from tests.support.fakes.openai_api import OpenAIFake


class FakeLlamaServer(OpenAIFake):
    def __init__(self, alias: str = "smollm2-135m") -> None:
        super().__init__([alias])
        self.loading = False

    def model_list(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": m,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "llamacpp",
                    "meta": {"vocab_type": 2, "n_vocab": 49152, "n_ctx_train": 8192},
                }
                for m in self.models
            ],
        }

    def knows(self, model: str) -> bool:
        return True  # llama-server serves its one model whatever the request says

    def routes(self) -> list[Any]:
        return [(r"/health", HealthHandler, {"fake": self}), *self.openai_routes()]


class HealthHandler(FakeHandler):
    fake: FakeLlamaServer

    def get(self) -> None:
        if self.fake.loading:
            self.send_json(
                {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}},
                503,
            )
        else:
            self.send_json({"status": "ok"})
