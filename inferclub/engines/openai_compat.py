"""Any OpenAI-compatible server (TTS, image, embedding servers, LocalAI, sd.cpp, ...)."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

from inferclub.engines.base import (
    SERVICE_TYPES,
    Engine,
    Health,
    Service,
    get_json,
    openai_model_ids,
)
from inferclub.engines.hookspecs import hookimpl


class OpenAICompatEngine(Engine):
    name = "openai"
    description = "any OpenAI-compatible server (models from {url}/models)"
    service_types = frozenset(SERVICE_TYPES)
    features = frozenset({"timestamps"})
    probe_order = 1000

    async def health(self, session: aiohttp.ClientSession, service: Service) -> Health:
        # Some servers (TTS, image) have no model list; any HTTP answer below 500 means up.
        async with session.get(
            f"{service.base_url}/models", headers=self.auth_headers(service)
        ) as resp:
            if resp.status < 500:
                return Health(True)
            return Health(False, f"GET {service.base_url}/models returned HTTP {resp.status}")

    async def probe(self, session: aiohttp.ClientSession, root_url: str) -> Service | None:
        if not openai_model_ids(await get_json(session, f"{root_url}/v1/models")):
            return None
        return Service(name="openai", engine=self.name, url=f"{root_url}/v1")


@hookimpl(trylast=True)
def register_engines(register: Callable[[type[Engine]], None]) -> None:
    register(OpenAICompatEngine)
