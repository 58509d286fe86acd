"""The OpenAI-compatible consumer API: models, and the proxied inference endpoints."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tornado.httputil import HTTPFile, HTTPInputError, parse_body_arguments
from tornado.iostream import StreamClosedError

from inferclub import multipart, openai_errors, wire
from inferclub.hub.handlers.base import ApiHandler, NotFoundHandler
from inferclub.hub.relay import RequestMeter, Transform, Upstream
from inferclub.hub.routing import Route
from inferclub.hub.store import ProviderRecord
from inferclub.openai_errors import OpenAIError


def _model_entry(model: str, type_: str, provider: ProviderRecord) -> dict[str, Any]:
    return {
        "id": model,
        "object": "model",
        "created": int(provider.created_at),
        "owned_by": provider.name,
        "type": type_,
    }


class ModelsHandler(ApiHandler):
    async def get(self) -> None:
        data = [_model_entry(*m) for m in self.hub.registry.models(self.owner.user_id)]
        self.write_json({"object": "list", "data": data})


class ModelHandler(ApiHandler):
    async def get(self, model: str) -> None:
        checked_model(model)  # a 60 KB id in the URL was echoed whole in the 404
        for m, type_, provider in self.hub.registry.models(self.owner.user_id):
            if m == model:
                self.write_json(_model_entry(m, type_, provider))
                return
        raise openai_errors.model_not_found(model)


def checked_model(model: object) -> str:
    """The request's ``model``, or a 400 naming it: a huge id would be stored in every
    history row and compared on every route."""
    if not isinstance(model, str) or not model:
        raise openai_errors.bad_request(
            "You must provide a model parameter.", "model", "missing_model"
        )
    if len(model) > wire.MAX_MODEL_ID:
        raise openai_errors.bad_request(
            f"The model id is longer than {wire.MAX_MODEL_ID} characters.",
            "model",
            "model_too_long",
        )
    return model


@dataclass
class Forward:
    """What goes to the agent, and how its answer comes back."""

    body: bytes
    #: The hub asked for stream usage the client did not ask for: strip it again.
    strip_usage: bool = False
    #: Rewrites a whole (non-streamed) success body: ``(content type, body) -> same``.
    transform: Transform | None = None
    #: Extra response headers for the client.
    headers: dict[str, str] = field(default_factory=dict)


class ProxyHandler(ApiHandler):
    """Routes a request to one of the caller's online providers and relays the answer."""

    #: The endpoint (relative to ``/v1``) this handler serves: a key of ``wire.ENDPOINT_TYPES``.
    endpoint: ClassVar[str] = "/chat/completions"

    _relay_task: asyncio.Task[None] | None = None

    @property
    def service_type(self) -> str:
        return wire.ENDPOINT_TYPES[self.endpoint]

    @property
    def api_path(self) -> str:
        """The ``/v1/...`` path this request stands for (the dashboard serves them elsewhere)."""
        return self.request.path

    def parse(self) -> tuple[str, Forward]:
        """The model to route on and what to forward; JSON bodies by default."""
        payload = self.json_body()
        model = checked_model(payload.get("model"))
        return model, Forward(self.body)

    def adapt(self, route: Route, fwd: Forward) -> Forward:
        """A last change of the request once the service is known (see transcriptions)."""
        return fwd

    async def post(self) -> None:
        hub = self.hub
        meter = RequestMeter(
            user_id=self.owner.user_id,
            key_id=self.owner.key_id,
            endpoint=self.api_path,
            type=self.service_type,
            bytes_in=self._size,
        )
        self.request_id = meter.id
        self.set_header(wire.REQUEST_ID_HEADER, meter.id)
        hub.inflight += 1
        try:
            with hub.concurrency.slot(self.owner.user_id):
                await self._serve(meter)
        except OpenAIError as err:
            meter.failed(err.status, err.type, err.code)
            raise
        finally:
            hub.inflight -= 1
            hub.history.add(meter.finished())

    async def _serve(self, meter: RequestMeter) -> None:
        model, fwd = self.parse()
        meter.asked_for(model)
        route = self.hub.registry.route(self.owner.user_id, self.service_type, model)
        meter.routed(route.provider.id, route.service.name)
        fwd = self.adapt(route, fwd)
        self.set_header(wire.PROVIDER_HEADER, route.provider.name)
        for name, value in fwd.headers.items():
            self.set_header(name, value)
        await self._relay(route, fwd, meter)

    async def _relay(self, route: Route, fwd: Forward, meter: RequestMeter) -> None:
        upstream = Upstream.for_route(
            route,
            self.api_path,
            self.request.headers.get("Content-Type", "application/json"),
            meter.id,
            self.hub.signer,
            fwd.body,
        )
        task = asyncio.ensure_future(
            self.hub.relay.forward(self, upstream, fwd.body, meter, fwd.strip_usage, fwd.transform)
        )
        self._relay_task = task
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
            # on_connection_close cancelled the relay: the connection is gone.
            self._connection_lost(meter)
            return
        except StreamClosedError:
            # A write found the connection closed before on_connection_close ran.
            self._connection_lost(meter)
            return
        finally:
            self._relay_task = None
        if not self._finished:
            self.finish()

    def _connection_lost(self, meter: RequestMeter) -> None:
        # Past the shutdown deadline the hub closes connections itself; otherwise the
        # client left.
        if self.hub.cutting:
            meter.cut_by_server()
        else:
            meter.cancelled_by_client()

    def start_stream(self) -> None:
        # Tornado leaves Nagle's algorithm on until finish(); a stream of small chunks would
        # then wait for the client's delayed ACKs (up to 40 ms each on a real network).
        stream = getattr(self.request.connection, "stream", None)
        if stream is not None:
            stream.set_nodelay(True)

    def on_connection_close(self) -> None:
        # Frees an abandoned upload's chunks (see ApiHandler); without it they stayed in
        # memory until the hub exited.
        super().on_connection_close()
        task = self._relay_task
        if task is not None and not task.done():
            task.cancel()


class ChatCompletionsHandler(ProxyHandler):
    endpoint = "/chat/completions"

    def parse(self) -> tuple[str, Forward]:
        payload = self.json_body()
        model = checked_model(payload.get("model"))
        fwd = Forward(self.body)
        if payload.get("stream") is True:
            opts = payload.get("stream_options")
            if not isinstance(opts, dict) or not opts.get("include_usage"):
                # Ask for usage so history has token counts; the usage-only chunk is
                # stripped again before the client sees it.
                payload["stream_options"] = {
                    **(opts if isinstance(opts, dict) else {}),
                    "include_usage": True,
                }
                fwd = Forward(json.dumps(payload).encode(), strip_usage=True)
        return model, fwd


class CompletionsHandler(ChatCompletionsHandler):
    endpoint = "/completions"


class EmbeddingsHandler(ProxyHandler):
    endpoint = "/embeddings"


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
    EmbeddingsHandler,
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
