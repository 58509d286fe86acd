"""The OpenAI-compatible consumer API: models, and the proxied inference endpoints."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

from inferclub import errors
from inferclub.errors import ApiError
from inferclub.handlers.base import ApiHandler, NotFoundHandler
from inferclub.routing import Route
from inferclub.store import ProviderRecord, RequestRecord


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
        for m, type_, provider in self.hub.registry.models(self.owner.user_id):
            if m == model:
                self.write_json(_model_entry(m, type_, provider))
                return
        raise ApiError(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            "invalid_request_error",
            "model_not_found",
            "model",
        )


class ProxyHandler(ApiHandler):
    """Routes a request to one of the caller's online providers and relays the answer."""

    service_type = "llm"

    _relay_task: asyncio.Task[None] | None = None

    def parse(self) -> tuple[str, bytes, bool]:
        """``(model, body to forward, strip_usage)`` for this request."""
        payload = self.json_body()
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise errors.bad_request("You must provide a model parameter.", "model", "missing_model")
        body = self.body
        strip_usage = False
        if payload.get("stream") is True and self.service_type == "llm":
            opts = payload.get("stream_options")
            if not isinstance(opts, dict) or not opts.get("include_usage"):
                # Ask for usage so history has token counts; the usage-only chunk is
                # stripped again before the client sees it.
                payload["stream_options"] = {**(opts if isinstance(opts, dict) else {}),
                                             "include_usage": True}
                body = json.dumps(payload).encode()
                strip_usage = True
        return model, body, strip_usage

    async def post(self) -> None:
        hub = self.hub
        record = RequestRecord(
            id="req_" + secrets.token_hex(12),
            user_id=self.owner.user_id,
            key_id=self.owner.key_id,
            endpoint=self.request.path,
            started_at=time.time(),
            type=self.service_type,
            bytes_in=self._size,
        )
        self.set_header("X-Request-Id", record.id)
        t0 = time.perf_counter()
        hub.inflight += 1
        try:
            model, body, strip_usage = self.parse()
            record.model = model
            route = hub.registry.route(self.owner.user_id, self.service_type, model)
            record.provider_id, record.service = route.provider.id, route.service.name
            self.set_header("X-InferClub-Provider", route.provider.name)
            await self._relay(route, body, record, strip_usage)
        except ApiError as err:
            record.status, record.error_type = err.status, err.type
            raise
        finally:
            hub.inflight -= 1
            record.duration_ms = (time.perf_counter() - t0) * 1000
            if not record.status:
                record.status = 499 if record.cancelled else 500
            hub.history.add(record)

    async def _relay(self, route: Route, body: bytes, record: RequestRecord, strip: bool) -> None:
        path = self.request.path[len("/v1"):]
        url = route.provider.callback_url.rstrip("/") + path
        headers = {
            "Content-Type": self.request.headers.get("Content-Type", "application/json"),
            "Authorization": "Bearer " + self.hub.callback_token(route.provider.id),
            "X-InferClub-Service": route.service.name,
            "X-Request-Id": record.id,
        }
        task = asyncio.ensure_future(self.hub.relay.forward(self, url, body, headers, record, strip))
        self._relay_task = task
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
            # on_connection_close cancelled the relay: the client is gone.
            record.cancelled = True
            return
        finally:
            self._relay_task = None
        if not self._finished:
            self.finish()

    def on_connection_close(self) -> None:
        task = self._relay_task
        if task is not None and not task.done():
            task.cancel()


class ChatCompletionsHandler(ProxyHandler):
    service_type = "llm"


class CompletionsHandler(ProxyHandler):
    service_type = "llm"


routes = [
    (r"/v1/models", ModelsHandler),
    (r"/v1/models/(.+)", ModelHandler),
    (r"/v1/chat/completions", ChatCompletionsHandler),
    (r"/v1/completions", CompletionsHandler),
]

fallback_routes = [(r"/v1/.*", NotFoundHandler)]
