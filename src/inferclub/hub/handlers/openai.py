"""The OpenAI-compatible consumer API: models, and the proxied inference endpoints."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from tornado.httputil import HTTPFile, HTTPInputError, parse_body_arguments

from inferclub import multipart, openai_errors, wire
from inferclub.hub.affinity import Conversation
from inferclub.hub.handlers.base import ApiHandler, NotFoundHandler
from inferclub.hub.handlers.proxy import Forward, ProxyHandler, checked_model
from inferclub.hub.routing import Route
from inferclub.hub.store import ProviderRecord

__all__ = ["Forward", "ProxyHandler", "checked_model"]


def _model_entry(model: str, type_: str, provider: ProviderRecord) -> dict[str, Any]:
    return {
        "id": model,
        "object": "model",
        "created": int(provider.created_at),
        "owned_by": provider.name,
        "type": type_,
        "endpoints": wire.endpoints_for(type_),
    }


class _ModelsBase(ApiHandler):
    def listed(self) -> list[tuple[str, str, ProviderRecord]]:
        """The user's models; a provider whose agent said goodbye no longer counts, as one
        gone offline does not: the hub routes nothing new to it, so it must not own a model."""
        fleet = self.hub.fleet
        return self.hub.registry.models(
            self.owner.user_id, skip=lambda p: fleet.state(p.id).leaving
        )

    def entry(self, model: str, type_: str, provider: ProviderRecord) -> dict[str, Any]:
        """The model, with the providers of it that cool down after failing, if any."""
        entry = _model_entry(model, type_, provider)
        fleet, uid = self.hub.fleet, self.owner.user_id
        cooling = [
            r.provider.name
            for r in self.hub.registry.candidates(uid, type_, model)
            if fleet.cooling_down(r.provider.id) is not None
        ]
        if cooling:
            entry["cooling_down"] = cooling
        return entry


class ModelsHandler(_ModelsBase):
    async def get(self) -> None:
        self.write_json({"object": "list", "data": [self.entry(*m) for m in self.listed()]})


class ModelHandler(_ModelsBase):
    async def get(self, model: str) -> None:
        checked_model(model)  # a 60 KB id in the URL was echoed whole in the 404
        for m, type_, provider in self.listed():
            if m == model:
                self.write_json(self.entry(m, type_, provider))
                return
        raise openai_errors.model_not_found(model)


class ChatCompletionsHandler(ProxyHandler):
    endpoint = "/chat/completions"

    def parse(self) -> tuple[str, Forward]:
        payload = self.json_body()
        model = checked_model(payload.get("model"))
        fwd = Forward(self.body)
        if payload.get("stream") is True:
            fwd.stream = True
            opts = payload.get("stream_options")
            if not isinstance(opts, dict) or not opts.get("include_usage"):
                # Ask for usage so history has token counts; the usage-only chunk is
                # stripped again before the client sees it.
                payload["stream_options"] = {
                    **(opts if isinstance(opts, dict) else {}),
                    "include_usage": True,
                }
                fwd = Forward(json.dumps(payload).encode(), strip_usage=True, stream=True)
        fwd.conversation = Conversation(self.owner.user_id, payload.get("messages"))
        return model, fwd


class CompletionsHandler(ChatCompletionsHandler):
    endpoint = "/completions"


class ResponsesHandler(ProxyHandler):
    """OpenAI's Responses API. Streams are relayed event by event like chat; their usage
    comes in the final ``response.completed`` event (``response.usage``), so nothing needs
    to be asked for."""

    endpoint = "/responses"


class EmbeddingsHandler(ProxyHandler):
    endpoint = "/embeddings"


class RerankHandler(ProxyHandler):
    """``{"model", "query", "documents", "top_n"}`` -> ``{"results": [{"index",
    "relevance_score"}]}``, as llama-server (``--reranking``) and vLLM serve it; OpenAI has
    no such endpoint, so the SDK reaches it with ``client.post("/rerank", ...)``."""

    endpoint = "/rerank"


class SpeechHandler(ProxyHandler):
    """Audio bytes (or ``stream_format: sse`` events) stream back as they arrive."""

    endpoint = "/audio/speech"


class ImageGenerationsHandler(ProxyHandler):
    endpoint = "/images/generations"


class MultipartHandler(ProxyHandler):
    """Uploads: parsed just enough to route on ``model``; forwarded byte for byte."""

    #: Form fields of which at least one must carry a file.
    file_fields: tuple[str, ...] = ("file",)

    def parse(self) -> tuple[str, Forward]:
        ctype = self.request.headers.get("Content-Type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            raise openai_errors.bad_request("Expected a multipart/form-data body.")
        body = self.body
        self.fields: dict[str, list[bytes]] = {}
        self.files: dict[str, list[HTTPFile]] = {}
        try:
            parse_body_arguments(ctype, body, self.fields, self.files)
        except HTTPInputError as exc:
            raise openai_errors.bad_request(f"Malformed multipart body: {exc}") from None
        model = checked_model(self.field("model"))
        if not any(self.files.get(name) for name in self.file_fields):
            raise openai_errors.bad_request(
                f"You must upload a file in `{self.file_fields[0]}`.",
                self.file_fields[0],
                "missing_file",
            )
        return model, Forward(body)

    def with_model(self, fwd: Forward, model: str) -> Forward:
        ctype = self.request.headers["Content-Type"]
        return dataclasses.replace(fwd, body=multipart.set_field(fwd.body, ctype, "model", model))

    def field(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[0].decode("utf-8", "replace") if values else None


class TranscriptionsHandler(MultipartHandler):
    """Speech to text. ``verbose_json`` reaches only services that declare ``timestamps``;
    for others it is downgraded to plain text, and the client is told by a header."""

    endpoint = "/audio/transcriptions"
    body_limit_setting = "max_audio_body"

    def adapt(self, route: Route, fwd: Forward) -> Forward:
        ctype = self.request.headers["Content-Type"]
        wanted = self.field("response_format") or "json"
        if wanted == "verbose_json" and "timestamps" not in route.service.features:
            body = multipart.set_field(fwd.body, ctype, "response_format", "text")
            body = multipart.remove_field(body, ctype, "timestamp_granularities[]")
            return Forward(
                body,
                transform=_json_text_to_plain,
                headers={wire.DOWNGRADED_HEADER: "verbose_json->text"},
            )
        if wanted == "text":
            return Forward(fwd.body, transform=_json_text_to_plain)
        return fwd


class TranslationsHandler(TranscriptionsHandler):
    endpoint = "/audio/translations"


class ImageEditsHandler(MultipartHandler):
    endpoint = "/images/edits"
    body_limit_setting = "max_image_body"
    file_fields = ("image", "image[]")

    def body_limit(self) -> int:
        return self.hub.settings.image_edit_body_limit

    def parse(self) -> tuple[str, Forward]:
        model, fwd = super().parse()
        limit = self.hub.settings.max_image_body
        images = [f for name in ("image", "image[]") for f in self.files.get(name, ())]
        masks = self.files.get("mask", [])
        if len(images) > wire.MAX_EDIT_IMAGES:
            raise openai_errors.bad_request(
                f"At most {wire.MAX_EDIT_IMAGES} images can be edited at once.", "image"
            )
        if len(masks) > 1:
            raise openai_errors.bad_request("At most one mask can be sent.", "mask")
        for f in [*images, *masks]:
            if len(f.body) > limit:
                raise openai_errors.too_large(limit, f"image {f.filename!r}")
        return model, fwd


def _json_text_to_plain(ctype: str, body: bytes) -> tuple[str, bytes]:
    """Some engines answer ``response_format=text`` with ``{"text": ...}``; clients get text."""
    if ctype.startswith("application/json"):
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            return ctype, body
        if isinstance(data, dict) and isinstance(data.get("text"), str):
            return "text/plain; charset=utf-8", data["text"].encode()
    return ctype, body


#: One handler per endpoint of ``wire.ENDPOINT_TYPES``, which the agent routes by too.
PROXY_HANDLERS: tuple[type[ProxyHandler], ...] = (
    ChatCompletionsHandler,
    CompletionsHandler,
    ResponsesHandler,
    EmbeddingsHandler,
    RerankHandler,
    TranscriptionsHandler,
    TranslationsHandler,
    SpeechHandler,
    ImageGenerationsHandler,
    ImageEditsHandler,
)

routes: list[tuple[str, type[ApiHandler]]] = [
    (r"/v1/models", ModelsHandler),
    (r"/v1/models/(.+)", ModelHandler),
    *((f"/v1{handler.endpoint}", handler) for handler in PROXY_HANDLERS),
]

fallback_routes = [(r"/v1/.*", NotFoundHandler)]
