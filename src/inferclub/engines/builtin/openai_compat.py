"""Any OpenAI-compatible server (TTS, image, embedding servers, LocalAI, sd.cpp, ...)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import aiohttp

from inferclub.engines.audio import map_sse, normalise_transcript, stt_ask, usage_from_token_usage
from inferclub.engines.base import (
    Engine,
    EngineRequest,
    EngineResponse,
    Health,
    Service,
    get_json,
    openai_model_ids,
)
from inferclub.engines.hookspecs import hookimpl
from inferclub.wire import SERVICE_TYPES


class OpenAICompatEngine(Engine):
    name = "openai"
    description = "any OpenAI-compatible server (models from {url}/models)"
    service_types = frozenset(SERVICE_TYPES)
    features = frozenset({"timestamps"})
    probe_order = 1000
    # Kokoro-FastAPI, Piper's local-tts, the embeddings server of manifests/openai.yaml.
    default_ports = (7878, 8103, 8880)

    async def health(self, session: aiohttp.ClientSession, service: Service) -> Health:
        # Some servers (TTS, image) have no model list; any HTTP answer below 500 means up.
        async with session.get(
            f"{service.base_url}/models", headers=self.auth_headers(service)
        ) as resp:
            if resp.status < 500:
                return Health(True)
            return Health(False, f"GET {service.base_url}/models returned HTTP {resp.status}")

    def translate_response(
        self, service: Service, request: EngineRequest, response: EngineResponse
    ) -> EngineResponse:
        if service.type == "stt":
            return normalise_transcript(response, stt_ask(request))
        if service.type == "tts" and response.headers.get("Content-Type", "").startswith(
            "text/event-stream"
        ):
            return replace(response, chunks=map_sse(response.chunks, usage_from_token_usage))
        return response

    async def probe(self, session: aiohttp.ClientSession, root_url: str) -> Service | None:
        if not openai_model_ids(await get_json(session, f"{root_url}/v1/models")):
            return None
        url = f"{root_url}/v1"
        kind = await served_type(session, url)
        return Service(name=PROBE_NAMES[kind], engine=self.name, type=kind, url=url)


#: The routes that tell a server's type, most telling first: a server with a chat route is
#: an LLM server even if it also embeds.
TYPE_ROUTES = (
    ("llm", "/chat/completions"),
    ("tts", "/audio/speech"),
    ("stt", "/audio/transcriptions"),
    ("image", "/images/generations"),
    ("embedding", "/embeddings"),
)
PROBE_NAMES = {
    "llm": "openai",
    "tts": "tts",
    "stt": "stt",
    "image": "images",
    "embedding": "embeddings",
}


async def served_type(session: aiohttp.ClientSession, url: str) -> str:
    """The service type of an OpenAI-compatible server at ``url`` (``.../v1``), from which
    routes exist. A POST without a body is refused by every real route (400, 422, 500)
    without any inference, while a missing route answers 404, 405 or 501. (No body at all:
    some small servers leave an unread body on the connection after a 404.)"""
    for kind, path in TYPE_ROUTES:
        async with session.post(
            url + path, data=b"", headers={"Content-Type": "application/json"}
        ) as resp:
            await resp.read()
            if resp.status not in (404, 405, 501):
                return kind
    return "llm"


@hookimpl(trylast=True)
def register_engines(register: Callable[[type[Engine]], None]) -> None:
    register(OpenAICompatEngine)
