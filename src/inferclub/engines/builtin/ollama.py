"""Ollama: models are `name:tag` (a bare `name` means `name:latest`); `/api/tags` + `/api/ps`."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

from inferclub.engines.base import Engine, EngineError, Health, Load, Service, get_json
from inferclub.engines.hookspecs import hookimpl


def normalise_name(name: str) -> str:
    """`llama3.2` -> `llama3.2:latest`; names with a tag are unchanged."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def _models(data: object, key: str = "models") -> list[dict[str, object]]:
    items = data.get(key) if isinstance(data, dict) else None
    if items is None:
        return []
    if not isinstance(items, list):
        raise EngineError(f"Ollama returned a `{key}` that is not a list")
    return [m for m in items if isinstance(m, dict) and m.get("name")]


class OllamaEngine(Engine):
    name = "ollama"
    description = "Ollama (pulled models from /api/tags; loaded ones from /api/ps)"
    service_types = frozenset({"llm", "embedding", "stt"})
    default_ports = (11434,)
    probe_order = 10

    async def discover_models(self, session: aiohttp.ClientSession, service: Service) -> list[str]:
        # Ollama loads pulled models on demand, so every pulled model can be served.
        tags = _models(
            await get_json(session, f"{service.root_url}/api/tags", self.auth_headers(service))
        )
        names = []
        for m in tags:
            caps = m.get("capabilities")
            if isinstance(caps, list) and caps:
                wanted = "embedding" if service.type == "embedding" else "completion"
                if service.type in ("llm", "embedding") and wanted not in caps:
                    continue
            names.append(str(m["name"]))
        return names

    async def health(self, session: aiohttp.ClientSession, service: Service) -> Health:
        headers = self.auth_headers(service)  # Ollama has no auth; a proxy in front may
        async with session.get(f"{service.root_url}/", headers=headers) as resp:
            text = await resp.text(errors="replace")
            if resp.status != 200 or "Ollama is running" not in text:
                return Health(False, f"GET / returned HTTP {resp.status}, not 'Ollama is running'")
        ps = await get_json(session, f"{service.root_url}/api/ps", headers)
        loaded = [str(m["name"]) for m in _models(ps)]
        return Health(True, info={"loaded": loaded})

    async def load(self, session: aiohttp.ClientSession, service: Service) -> Load | None:
        # /api/ps lists the models in memory; Ollama does not say how many requests wait.
        ps = await get_json(session, f"{service.root_url}/api/ps", self.auth_headers(service))
        return Load(loaded=tuple(str(m["name"]) for m in _models(ps)))

    def model_matches(self, service: Service, advertised: str, requested: str) -> bool:
        return normalise_name(advertised) == normalise_name(requested)

    async def probe(self, session: aiohttp.ClientSession, root_url: str) -> Service | None:
        async with session.get(f"{root_url}/") as resp:
            if "Ollama is running" not in await resp.text(errors="replace"):
                return None
        return Service(name="ollama", engine=self.name, url=f"{root_url}/v1")


@hookimpl(trylast=True)
def register_engines(register: Callable[[type[Engine]], None]) -> None:
    register(OllamaEngine)
