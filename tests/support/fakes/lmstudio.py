"""Fake LM Studio, after engine-apis.md §2.

`/v1/models` lists every downloaded model (JIT), with no `created`; `/api/v0/models` adds
`type` (llm | vlm | embeddings) and `state` (loaded | not-loaded). Only loaded models answer.
"""

from __future__ import annotations

from typing import Any

from tests.support.fakes.base import FakeHandler
from tests.support.fakes.openai_api import OpenAIFake


class FakeLmStudio(OpenAIFake):
    def __init__(self, catalog: list[dict[str, Any]] | None = None) -> None:
        #: One dict per downloaded model: id, type, state.
        self.catalog = catalog or [
            {"id": "qwen/qwen3-4b", "type": "llm", "state": "loaded"},
            {"id": "qwen2-vl-7b-instruct", "type": "vlm", "state": "not-loaded"},
            {"id": "text-embedding-nomic-embed-text-v1.5", "type": "embeddings", "state": "loaded"},
        ]
        super().__init__([m["id"] for m in self.catalog])

    def knows(self, model: str) -> bool:
        return any(m["id"] == model and m["state"] == "loaded" for m in self.catalog)

    def model_list(self) -> dict[str, Any]:
        return {
            "data": [
                {"id": m["id"], "object": "model", "owned_by": "organization_owner"}
                for m in self.catalog
            ],
            "object": "list",
        }

    def model_error(self, model: str) -> tuple[int, Any]:
        return 404, {
            "error": {
                "message": f"Model '{model}' not found",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }
        }

    def routes(self) -> list[Any]:
        return [(r"/api/v0/models", V0ModelsHandler, {"fake": self}), *self.openai_routes()]


class V0ModelsHandler(FakeHandler):
    fake: FakeLmStudio

    def get(self) -> None:
        self.send_json(
            {
                "object": "list",
                "data": [
                    {
                        "id": m["id"],
                        "object": "model",
                        "type": m["type"],
                        "publisher": "lmstudio-community",
                        "arch": "qwen3",
                        "compatibility_type": "gguf",
                        "quantization": "Q4_K_M",
                        "state": m["state"],
                        "max_context_length": 32768,
                    }
                    for m in self.fake.catalog
                ],
            }
        )
