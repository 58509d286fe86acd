"""Whisper servers: OpenAI-style ones (speaches, faster-whisper-server) and whisper.cpp.

whisper.cpp's `whisper-server` has its own API: uploads go to `/inference` (same multipart
fields as OpenAI), translation is a `translate=true` field, there is no model list (it serves the
one model it was started with, whatever `model` says), `text` answers come as `text/html` and
errors as `{"error": "..."}`, and its verbose_json keeps token-level `words` inside each segment.
Choose it with `options: {api: whispercpp}` and give the service URL without `/v1`
(`http://127.0.0.1:8080`).

Some OpenAI-style servers (faster-whisper-server) refuse `response_format=text`; every one
answers `json`, so `text` is asked as `json` and the answer's `text` relayed as `text/plain`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from types import MappingProxyType

import aiohttp

from inferclub.engines.audio import normalise_transcript, remember_format, stt_ask
from inferclub.engines.base import (
    Engine,
    EngineError,
    EngineRequest,
    EngineResponse,
    Health,
    Model,
    Service,
    get_json,
)
from inferclub.engines.hookspecs import hookimpl
from inferclub.multipart import set_field

APIS = ("openai", "whispercpp")


def _is_whispercpp(service: Service) -> bool:
    return service.options.get("api") == "whispercpp"


class WhisperEngine(Engine):
    name = "whisper"
    description = "Whisper servers: OpenAI-style (speaches, faster-whisper-server) or whisper.cpp"
    service_types = frozenset({"stt"})
    features = frozenset({"timestamps"})
    options = MappingProxyType(
        {
            "api": "`openai` (default: speaches, faster-whisper-server) or `whispercpp`",
            "inference_path": "whisper.cpp only: its --inference-path (default /inference)",
        }
    )
    default_ports = (8080, 8000)
    probe_order = 30

    def check_service(self, service: Service) -> dict[str, str]:
        problems = super().check_service(service)
        api = service.options.get("api", "openai")
        if api not in APIS:
            problems["options.api"] = (
                f"unknown whisper api {api!r} (expected one of openai, whispercpp)"
            )
        elif api == "whispercpp" and not service.models:
            problems["models"] = (
                "whisper.cpp has no model list: name the model it serves under `models:`"
            )
        path = service.options.get("inference_path", "/inference")
        if not isinstance(path, str) or not path.startswith("/"):
            problems["options.inference_path"] = "must be a path starting with '/'"
        return problems

    async def discover_models(self, session: aiohttp.ClientSession, service: Service) -> list[str]:
        if _is_whispercpp(service):
            return []
        data = await get_json(session, f"{service.base_url}/models", self.auth_headers(service))
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise EngineError("model list is not a list")
        # speaches lists every installed model with its task; keep the speech-to-text ones.
        return [
            str(m["id"])
            for m in items
            if isinstance(m, dict)
            and m.get("id")
            and m.get("task", "automatic-speech-recognition") == "automatic-speech-recognition"
        ]

    async def health(self, session: aiohttp.ClientSession, service: Service) -> Health:
        async with session.get(f"{service.root_url}/health") as resp:
            body = await resp.text(errors="replace")
            if resp.status == 200:
                return Health(True)
            return Health(False, f"GET /health returned HTTP {resp.status}: {body[:200]}")

    def forward_path(self, service: Service, path: str) -> str:
        if _is_whispercpp(service) and path in ("/audio/transcriptions", "/audio/translations"):
            return str(service.options.get("inference_path", "/inference"))
        return path

    def prepare_request(self, service: Service, request: EngineRequest) -> EngineRequest:
        prepared = remember_format(super().prepare_request(service, request))
        ctype = request.headers.get("Content-Type", "")
        if _is_whispercpp(service):
            if request.path == "/audio/translations":
                prepared = replace(
                    prepared, body=set_field(prepared.body, ctype, "translate", "true")
                )
        elif prepared.notes.get("response_format") == "text":
            prepared = replace(
                prepared, body=set_field(prepared.body, ctype, "response_format", "json")
            )
        return prepared

    def translate_response(
        self, service: Service, request: EngineRequest, response: EngineResponse
    ) -> EngineResponse:
        # whisper.cpp: `text` comes as text/html, verbose_json has words per segment only.
        # OpenAI-style: `text` was asked as `json` (see prepare_request).
        return normalise_transcript(response, stt_ask(request))

    async def probe(self, session: aiohttp.ClientSession, root_url: str) -> Service | None:
        health = await get_json(session, f"{root_url}/health")
        if not isinstance(health, dict):
            return None
        if health.get("message") == "OK":  # speaches
            return Service(name="whisper", engine=self.name, type="stt", url=f"{root_url}/v1")
        if health.get("status") != "ok":
            return None
        if await _openai_paths(session, root_url):
            # faster-whisper-server answers /health like whisper.cpp, but it is a FastAPI app
            # that describes its OpenAI routes; whisper.cpp has no /openapi.json.
            return await _openai_style(session, root_url)
        async with session.get(f"{root_url}/v1/models") as resp:
            if resp.status != 404:  # llama-server has /health too, but also a model list
                return None
        return Service(
            name="whisper-cpp",
            engine=self.name,
            type="stt",
            url=root_url,
            # whisper.cpp serves the one model it was started with, whatever the name.
            models=(Model("whisper-1"),),
            options={"api": "whispercpp"},
        )


async def _openai_paths(session: aiohttp.ClientSession, root_url: str) -> bool:
    """Whether the server's OpenAPI document (FastAPI servers have one) lists the OpenAI
    transcription route."""
    try:
        doc = await get_json(session, f"{root_url}/openapi.json")
    except EngineError:
        return False
    paths = doc.get("paths") if isinstance(doc, dict) else None
    return isinstance(paths, dict) and "/v1/audio/transcriptions" in paths


async def _openai_style(session: aiohttp.ClientSession, root_url: str) -> Service:
    url = f"{root_url}/v1"
    async with session.get(f"{url}/models") as resp:
        listed = resp.status == 200
    # Without a model list (faster-whisper-server 0.0.3) the server serves the one model it
    # was started with and ignores the `model` field, so any name reaches it.
    models = () if listed else (Model("whisper-1"),)
    return Service(name="whisper", engine="whisper", type="stt", url=url, models=models)


@hookimpl(trylast=True)
def register_engines(register: Callable[[type[Engine]], None]) -> None:
    register(WhisperEngine)
