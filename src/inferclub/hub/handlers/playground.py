"""The dashboard's playground: a page, the models it offers, and its inference endpoints.

The endpoints (``/dashboard/api/v1/...``) are the ``/v1`` proxy handlers with the session
cookie (and XSRF) in place of the bearer key: same parsing, routing, relay and history. Each is
an explicit subclass below, one per proxied ``/v1`` route.
"""

from __future__ import annotations

from typing import Any

import tornado.web

from inferclub.hub.handlers import guard, openai
from inferclub.hub.handlers.base import DashboardApiHandler, DashboardHandler, session_user
from inferclub.hub.routing import Registry
from inferclub.hub.store import KeyOwner
from inferclub.openai_errors import OpenAIError

PREFIX = "/dashboard/api"


def playground_models(registry: Registry, user_id: int) -> list[dict[str, Any]]:
    """What the playground offers: each (model, type) of an online provider, with the
    features of the service a request would be routed to."""
    out = []
    for model, type_, provider in registry.models(user_id):
        try:
            route = registry.route(user_id, type_, model)
        except OpenAIError:
            continue
        out.append(
            {
                "model": model,
                "type": type_,
                "provider": provider.name,
                "service": route.service.name,
                "features": list(route.service.features),
            }
        )
    return out


class PlaygroundHandler(DashboardHandler):
    section = "playground"

    @tornado.web.authenticated
    async def get(self) -> None:
        self.render("playground.html", models=playground_models(self.hub.registry, self.user_id))


class ModelsApiHandler(DashboardApiHandler):
    async def get(self) -> None:
        self.write_json({"models": playground_models(self.hub.registry, self.user_id)})


# -- inference endpoints ----------------------------------------------------------------------


class PlaygroundProxyMixin(openai.ProxyHandler):
    """Put before a ``/v1`` proxy handler class, it serves that handler under ``PREFIX`` with
    the session cookie instead of the bearer key, XSRF checked again. Rows in the history get
    no key id: the dashboard made them."""

    def check_xsrf_cookie(self) -> None:
        """ApiHandler turns XSRF off because a bearer key cannot be sent cross-site; a cookie
        can. Checked before the body is read, like the session (the token is a header)."""
        try:
            guard.check_origin(self.request, self.hub.settings.public_url)
        except tornado.web.HTTPError as exc:
            raise OpenAIError(
                403, exc.log_message or "", "invalid_request_error", "cross_site_request"
            ) from None
        tornado.web.RequestHandler.check_xsrf_cookie(self)

    async def authenticate(self) -> KeyOwner:
        user = await session_user(self, self.hub)
        if user is None:
            raise OpenAIError(
                401, "Sign in to the dashboard first.", "invalid_request_error", "not_signed_in"
            )
        return KeyOwner(key_id=None, user_id=user.id, login=user.login)

    @property
    def api_path(self) -> str:
        return self.request.path[len(PREFIX) :]


class PlaygroundChatCompletionsHandler(PlaygroundProxyMixin, openai.ChatCompletionsHandler):
    pass


class PlaygroundCompletionsHandler(PlaygroundProxyMixin, openai.CompletionsHandler):
    pass


class PlaygroundResponsesHandler(PlaygroundProxyMixin, openai.ResponsesHandler):
    pass


class PlaygroundEmbeddingsHandler(PlaygroundProxyMixin, openai.EmbeddingsHandler):
    pass


class PlaygroundRerankHandler(PlaygroundProxyMixin, openai.RerankHandler):
    pass


class PlaygroundTranscriptionsHandler(PlaygroundProxyMixin, openai.TranscriptionsHandler):
    pass


class PlaygroundTranslationsHandler(PlaygroundProxyMixin, openai.TranslationsHandler):
    pass


class PlaygroundSpeechHandler(PlaygroundProxyMixin, openai.SpeechHandler):
    pass


class PlaygroundImageGenerationsHandler(PlaygroundProxyMixin, openai.ImageGenerationsHandler):
    pass


class PlaygroundImageEditsHandler(PlaygroundProxyMixin, openai.ImageEditsHandler):
    pass


routes: list[tuple[str, Any]] = [
    (r"/dashboard/playground", PlaygroundHandler),
    (PREFIX + r"/models", ModelsApiHandler),
    (PREFIX + r"/v1/chat/completions", PlaygroundChatCompletionsHandler),
    (PREFIX + r"/v1/completions", PlaygroundCompletionsHandler),
    (PREFIX + r"/v1/responses", PlaygroundResponsesHandler),
    (PREFIX + r"/v1/embeddings", PlaygroundEmbeddingsHandler),
    (PREFIX + r"/v1/rerank", PlaygroundRerankHandler),
    (PREFIX + r"/v1/audio/transcriptions", PlaygroundTranscriptionsHandler),
    (PREFIX + r"/v1/audio/translations", PlaygroundTranslationsHandler),
    (PREFIX + r"/v1/audio/speech", PlaygroundSpeechHandler),
    (PREFIX + r"/v1/images/generations", PlaygroundImageGenerationsHandler),
    (PREFIX + r"/v1/images/edits", PlaygroundImageEditsHandler),
]
