"""vLLM (`vllm serve`): one model per process, OpenAI API under `/v1`, `/health` at the root."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import aiohttp

from inferclub.engines.audio import ChunksToTranscriptEvents, map_sse, normalise_transcript, stt_ask
from inferclub.engines.base import (
    Engine,
    EngineError,
    EngineRequest,
    EngineResponse,
    Health,
    Service,
    get_json,
    owned_by,
)
from inferclub.engines.hookspecs import hookimpl


class VllmEngine(Engine):
    name = "vllm"
    description = "vLLM's OpenAI server (chat, completions, embeddings, transcriptions)"
    service_types = frozenset({"llm", "stt", "embedding", "image", "tts"})
    features = frozenset({"timestamps"})
    default_ports = (8000,)
    probe_order = 20

    async def health(self, session: aiohttp.ClientSession, service: Service) -> Health:
        # 200 with an empty body when ready, 503 when the engine died; while weights load
        # the port does not answer at all (a connection error).
        async with session.get(f"{service.root_url}/health") as resp:
            if resp.status != 200:
                return Health(False, f"GET /health returned HTTP {resp.status}")
        try:
            version = await get_json(session, f"{service.root_url}/version")
        except (TimeoutError, aiohttp.ClientError, EngineError):
            return Health(True)  # /version is optional; the server is up
        info = {"version": version.get("version")} if isinstance(version, dict) else {}
        return Health(True, info=info)

    def translate_response(
        self, service: Service, request: EngineRequest, response: EngineResponse
    ) -> EngineResponse:
        if service.type != "stt":
            return response
        if response.headers.get("Content-Type", "").startswith("text/event-stream"):
            # Chat-style chunks, not OpenAI's transcript.text.* events.
            return replace(response, chunks=map_sse(response.chunks, ChunksToTranscriptEvents()))
        # `text` comes as JSON {"text", "usage"}; verbose_json's `duration` is a string.
        return normalise_transcript(response, stt_ask(request))

    async def probe(self, session: aiohttp.ClientSession, root_url: str) -> Service | None:
        models = await get_json(session, f"{root_url}/v1/models")
        if "vllm" not in owned_by(models):
            return None
        return Service(name="vllm", engine=self.name, url=f"{root_url}/v1")


@hookimpl(trylast=True)
def register_engines(register: Callable[[type[Engine]], None]) -> None:
    register(VllmEngine)
