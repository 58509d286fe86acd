"""LM Studio: advertises its *loaded* models, read from the native `/api/v0/models` list.

LM Studio's `/v1/models` also lists downloaded models that are not loaded (JIT loading), and a
request for one of those may take minutes; only `state == "loaded"` models are advertised.
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

from inferclub.engines.base import Engine, EngineError, Load, Service, get_json
from inferclub.engines.hookspecs import hookimpl

# LM Studio's own model types mapped to inferclub service types.
_TYPES = {"llm": "llm", "vlm": "llm", "embeddings": "embedding", "embedding": "embedding"}


class LmStudioEngine(Engine):
    name = "lmstudio"
    description = "LM Studio's local server (its loaded models, from /api/v0/models)"
    service_types = frozenset({"llm", "embedding"})
    default_ports = (1234,)
    probe_order = 10

    async def discover_models(self, session: aiohttp.ClientSession, service: Service) -> list[str]:
        data = await get_json(
            session, f"{service.root_url}/api/v0/models", self.auth_headers(service)
        )
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise EngineError("/api/v0/models did not return a model list")
        return [
            str(m["id"])
            for m in items
            if isinstance(m, dict)
            and m.get("id")
            and m.get("state") == "loaded"
            and _TYPES.get(str(m.get("type", "llm"))) == service.type
        ]

    async def load(self, session: aiohttp.ClientSession, service: Service) -> Load | None:
        # JIT loading serves a not-loaded model too, after a load: only `loaded` ones are hot.
        data = await get_json(
            session, f"{service.root_url}/api/v0/models", self.auth_headers(service)
        )
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise EngineError("/api/v0/models did not return a model list")
        return Load(
            loaded=tuple(
                str(m["id"])
                for m in items
                if isinstance(m, dict) and m.get("id") and m.get("state") == "loaded"
            )
        )

    async def probe(self, session: aiohttp.ClientSession, root_url: str) -> Service | None:
        data = await get_json(session, f"{root_url}/api/v0/models")
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list) or not all(
            isinstance(m, dict) and "state" in m for m in items
        ):
            return None
        return Service(name="lmstudio", engine=self.name, url=f"{root_url}/v1")


@hookimpl(trylast=True)
def register_engines(register: Callable[[type[Engine]], None]) -> None:
    register(LmStudioEngine)
