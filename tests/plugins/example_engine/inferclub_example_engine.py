"""An example engine plugin for inferclub.

It teaches the agent about a made-up server, "ExampleLM", whose API differs from OpenAI's in
the ways real servers do:

- its models are listed at `GET /api/models` as `{"models": [{"name": ..., "ready": bool}]}`;
- `GET /ping` answers `pong` when it is up;
- chat lives at `/api/chat` instead of `/v1/chat/completions` (same JSON and SSE).

A manifest uses it as `engine: example` with `url: http://host:port` (no `/v1`).
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

from inferclub.engines import Engine, EngineError, Health, Service, get_json, hookimpl


class ExampleEngine(Engine):
    name = "example"
    description = "ExampleLM (the example plugin)"
    service_types = frozenset({"llm"})

    async def discover_models(self, session: aiohttp.ClientSession, service: Service) -> list[str]:
        data = await get_json(session, f"{service.base_url}/api/models")
        if not isinstance(data, dict) or not isinstance(data.get("models"), list):
            raise EngineError("/api/models did not return a model list")
        return [str(m["name"]) for m in data["models"] if isinstance(m, dict) and m.get("ready")]

    async def health(self, session: aiohttp.ClientSession, service: Service) -> Health:
        async with session.get(f"{service.base_url}/ping") as resp:
            text = await resp.text()
            if resp.status == 200 and text.strip() == "pong":
                return Health(True)
            return Health(False, f"GET /ping returned HTTP {resp.status}")

    def forward_path(self, service: Service, path: str) -> str:
        return {"/chat/completions": "/api/chat"}.get(path, path)


@hookimpl
def register_engines(register: Callable[[type[Engine]], None]) -> None:
    register(ExampleEngine)
