"""llama.cpp's `llama-server`: OpenAI API under `/v1`, `/health` at the root (503 while loading)."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

from inferclub.engines.base import Engine, Health, Service, get_json, owned_by
from inferclub.engines.hookspecs import hookimpl


class LlamaCppEngine(Engine):
    name = "llamacpp"
    description = "llama.cpp's llama-server (chat, completions, embeddings)"
    service_types = frozenset({"llm", "embedding"})
    default_ports = (8080,)
    probe_order = 20

    async def health(self, session: aiohttp.ClientSession, service: Service) -> Health:
        async with session.get(f"{service.root_url}/health") as resp:
            if resp.status == 200:
                return Health(True)
            return Health(False, f"GET /health returned HTTP {resp.status}")

    async def probe(self, session: aiohttp.ClientSession, root_url: str) -> Service | None:
        models = await get_json(session, f"{root_url}/v1/models")
        if "llamacpp" not in owned_by(models):
            return None
        return Service(name="llamacpp", engine=self.name, url=f"{root_url}/v1")


@hookimpl(trylast=True)
def register_engines(register: Callable[[type[Engine]], None]) -> None:
    register(LlamaCppEngine)
