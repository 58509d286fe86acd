"""Fake Ollama, after engine-apis.md §3.

`GET /` answers `Ollama is running`; `/api/tags` lists pulled models as `name:tag`; `/api/ps`
the loaded ones; `/v1/models` has `data: null` when nothing is pulled; `/v1` errors are
`{"error": {message, type: not_found_error, param: null, code: null}}`; a bare name means
`:latest`; usage chunks only with `stream_options.include_usage`.
"""

from __future__ import annotations

from typing import Any

from tests.support.fakes.base import FakeHandler
from tests.support.fakes.openai_api import OpenAIFake


def _norm(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


class FakeOllama(OpenAIFake):
    def __init__(self, models: list[str] | None = None, loaded: list[str] | None = None) -> None:
        super().__init__(
            models
            if models is not None
            else ["llama3.2:latest", "qwen3:8b", "nomic-embed-text:latest"]
        )
        self.loaded = loaded if loaded is not None else ["qwen3:8b"]
        self.capabilities = {"nomic-embed-text:latest": ["embedding"]}

    def knows(self, model: str) -> bool:
        return _norm(model) in self.models

    def _tag(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "model": name,
            "modified_at": "2025-10-01T10:00:00Z",
            "size": 2019393189,
            "digest": "a80c4f17acd5",
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "llama",
                "families": ["llama"],
                "parameter_size": "3.2B",
                "quantization_level": "Q4_K_M",
            },
            "capabilities": self.capabilities.get(name, ["completion", "tools"]),
        }

    def model_list(self) -> dict[str, Any]:
        data = [
            {"id": m, "object": "model", "created": 1759312800, "owned_by": "library"}
            for m in self.models
        ]
        return {"object": "list", "data": data or None}

    def model_error(self, model: str) -> tuple[int, Any]:
        return 404, {
            "error": {
                "message": f'model "{model}" not found, try pulling it first',
                "type": "not_found_error",
                "param": None,
                "code": None,
            }
        }

    def routes(self) -> list[Any]:
        args = {"fake": self}
        return [
            (r"/", RootHandler, args),
            (r"/api/version", VersionHandler, args),
            (r"/api/tags", TagsHandler, args),
            (r"/api/ps", PsHandler, args),
            *self.openai_routes(),
        ]


class RootHandler(FakeHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish("Ollama is running")

    def head(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish()


class VersionHandler(FakeHandler):
    def get(self) -> None:
        self.send_json({"version": "0.12.3"})


class TagsHandler(FakeHandler):
    fake: FakeOllama

    def get(self) -> None:
        self.send_json({"models": [self.fake._tag(m) for m in self.fake.models]})


class PsHandler(FakeHandler):
    fake: FakeOllama

    def get(self) -> None:
        models = []
        for name in self.fake.loaded:
            tag = self.fake._tag(name)
            tag.pop("capabilities")
            models.append(
                {
                    **tag,
                    "expires_at": "2025-10-01T10:05:00Z",
                    "size_vram": 2019393189,
                    "context_length": 4096,
                }
            )
        self.send_json({"models": models})
