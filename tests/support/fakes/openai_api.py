"""OpenAI-style endpoints shared by the fakes (chat, completions, embeddings, models)."""

from __future__ import annotations

import time
from typing import Any

from tests.support.fakes.base import (
    FakeHandler,
    FakeServer,
    chat_chunks,
    chat_completion,
    text_completion,
    usage,
    words,
)


class OpenAIFake(FakeServer):
    """A fake with an OpenAI API under /v1. Knobs are plain attributes tests may change."""

    #: Path prefixes guarded by `api_key` (vLLM guards /v1 only).
    guarded_prefix = "/v1"

    def __init__(self, models: list[str] | None = None, api_key: str | None = None) -> None:
        super().__init__()
        self.models = list(models or [])
        self.api_key = api_key
        self.chunks = 5
        self.chunk_delay = 0.0
        self.first_delay = 0.0
        #: When set, every POST answers with (status, body bytes, content type).
        self.fail: tuple[int, bytes, str] | None = None
        #: Headers sent with ``fail`` (a busy engine's ``Retry-After``).
        self.fail_headers: dict[str, str] = {}

    # Engine-specific shapes --------------------------------------------------------------

    def model_list(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models
            ],
        }

    def unauthorized(self) -> tuple[int, Any]:
        return 401, {
            "error": {
                "message": "Unauthorized",
                "type": "authentication_error",
                "param": None,
                "code": None,
            }
        }

    def model_error(self, model: str) -> tuple[int, Any]:
        return 404, {
            "error": {
                "message": f"The model `{model}` does not exist.",
                "type": "invalid_request_error",
                "param": None,
                "code": "model_not_found",
            }
        }

    def include_usage(self, body: dict[str, Any]) -> bool:
        opts = body.get("stream_options")
        return isinstance(opts, dict) and bool(opts.get("include_usage"))

    def knows(self, model: str) -> bool:
        return model in self.models

    def openai_routes(self) -> list[Any]:
        # Imported here: the Responses fake builds on this module's handler base.
        from tests.support.fakes.responses import ResponsesHandler

        args = {"fake": self}
        return [
            (r"/v1/responses", ResponsesHandler, args),
            (r"/v1/models", ModelsHandler, args),
            (r"/v1/chat/completions", ChatHandler, args),
            (r"/v1/completions", CompletionsHandler, args),
            (r"/v1/embeddings", EmbeddingsHandler, args),
            (r"/v1/rerank", RerankHandler, args),
        ]


class OpenAIHandler(FakeHandler):
    fake: OpenAIFake

    def prepare(self) -> None:
        super().prepare()
        fake = self.fake
        if (
            fake.api_key
            and self.request.path.startswith(fake.guarded_prefix)
            and self.request.headers.get("Authorization") != f"Bearer {fake.api_key}"
        ):
            status, body = fake.unauthorized()
            self.send_json(body, status)
            return
        if self.request.method == "POST" and fake.fail is not None:
            status, raw, ctype = fake.fail
            self.set_status(status)
            self.set_header("Content-Type", ctype)
            for name, value in fake.fail_headers.items():
                self.set_header(name, value)
            self.finish(raw)

    def check_model(self, body: dict[str, Any]) -> str | None:
        model = str(body.get("model", ""))
        if not self.fake.knows(model):
            status, err = self.fake.model_error(model)
            self.send_json(err, status)
            return None
        return model


class ModelsHandler(OpenAIHandler):
    def get(self) -> None:
        self.send_json(self.fake.model_list())


class ChatHandler(OpenAIHandler):
    async def post(self) -> None:
        body = self.json_body()
        model = self.check_model(body)
        if model is None:
            return
        text = words(self.fake.chunks)
        if body.get("stream"):
            events = chat_chunks(model, text, self.fake.include_usage(body))
            await self.stream_events(events, self.fake.chunk_delay, self.fake.first_delay)
        else:
            self.send_json(chat_completion(model, "".join(text)))


class CompletionsHandler(OpenAIHandler):
    async def post(self) -> None:
        body = self.json_body()
        model = self.check_model(body)
        if model is None:
            return
        text = words(self.fake.chunks)
        if body.get("stream"):
            events: list[Any] = [
                {
                    "id": "cmpl-fake",
                    "object": "text_completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [{"index": 0, "text": w, "finish_reason": None}],
                }
                for w in text
            ]
            await self.stream_events(events, self.fake.chunk_delay, self.fake.first_delay)
        else:
            self.send_json(text_completion(model, "".join(text)))


class EmbeddingsHandler(OpenAIHandler):
    def post(self) -> None:
        body = self.json_body()
        model = self.check_model(body)
        if model is None:
            return
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        self.send_json(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                    for i, _ in enumerate(items)
                ],
                "model": model,
                "usage": {"prompt_tokens": len(items), "total_tokens": len(items)},
            }
        )


class RerankHandler(OpenAIHandler):
    """llama-server's and vLLM's `/v1/rerank`: documents by the share of the query's words they
    contain, best first, ``top_n`` of them."""

    def post(self) -> None:
        body = self.json_body()
        model = self.check_model(body)
        if model is None:
            return
        query = set(str(body.get("query", "")).lower().split())
        documents = [str(d) for d in body.get("documents", [])]
        scores = [len(query & set(d.lower().split())) / max(len(query), 1) for d in documents]
        ranked = sorted(enumerate(scores), key=lambda pair: -pair[1])
        top_n = body.get("top_n") or len(documents)
        self.send_json(
            {
                "model": model,
                "object": "list",
                "usage": {"prompt_tokens": len(documents), "total_tokens": len(documents)},
                "results": [{"index": i, "relevance_score": s} for i, s in ranked[:top_n]],
            }
        )


__all__ = ["OpenAIFake", "OpenAIHandler", "usage"]
