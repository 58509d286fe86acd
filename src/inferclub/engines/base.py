"""The `Engine` base class and the small value types engines work with.

An engine knows one kind of local inference server (vLLM, Ollama, whisper.cpp, ...): how to list
its models, how to tell whether it is up, how a request from the hub is forwarded to it and how
its answers are translated back. The agent owns the HTTP plumbing (sessions, streaming,
cancellation, concurrency limits); engines only describe the differences between servers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import aiohttp

from inferclub.openai_errors import normalise_error_body


class EngineError(Exception):
    """An engine answered, but not in the way its API documents (bad status, bad JSON)."""


@dataclass(frozen=True)
class Model:
    """A model of a service: `id` is the name the engine uses, `alias` the advertised one."""

    id: str
    alias: str | None = None

    @property
    def name(self) -> str:
        """The name advertised to the hub."""
        return self.alias or self.id


@dataclass(frozen=True)
class Service:
    """One local server as the manifest describes it (after validation)."""

    name: str
    engine: str
    url: str
    type: str = "llm"
    #: Models given in the manifest; empty means "discover them from the engine".
    models: tuple[Model, ...] = ()
    features: tuple[str, ...] = ()
    api_key: str | None = field(default=None, repr=False)
    max_concurrency: int | None = None
    #: Seconds to wait for the engine to answer, and between two streamed chunks.
    timeout: float | None = None
    #: Engine-specific settings (see `Engine.options`).
    options: Mapping[str, Any] = field(default_factory=dict)
    #: The `id` of the manifest host this service belongs to.
    host: str = ""

    @property
    def base_url(self) -> str:
        """`url` without a trailing slash."""
        return self.url.rstrip("/")

    @property
    def root_url(self) -> str:
        """The server's root: `url` without a trailing `/v1`, where native APIs live."""
        base = self.base_url
        return base.removesuffix("/v1")


@dataclass(frozen=True)
class Health:
    """The outcome of a health probe.

    `info` holds extra facts worth showing in the agent's health snapshot (engine version,
    loaded models...). It must be JSON-serialisable and must not contain secrets.
    """

    ok: bool
    detail: str = ""
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Load:
    """What an engine can tell of its load, for the hub's choice between services.

    `loaded` holds engine-side names of the models in memory now (a request for one of them
    starts at once; another may wait for a load of seconds or minutes); `queue` the requests
    waiting inside the engine. `None` means the engine cannot tell.
    """

    loaded: tuple[str, ...] | None = None
    queue: int | None = None


@dataclass
class EngineRequest:
    """A request on its way to an engine.

    `path` is relative to the service URL and starts with a slash (`/chat/completions`);
    `headers` are the headers sent to the engine (the hub's own headers are never in it);
    `body` is forwarded as is. `model` is the engine-side model name, when the request names one.
    `notes` is never sent: `prepare_request` leaves there what `translate_response` must know
    about the client's request after the body was changed (engines keep no per-request state).
    """

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    query: str = ""
    model: str | None = None
    notes: dict[str, str] = field(default_factory=dict)


@dataclass
class EngineResponse:
    """A successful engine response on its way back: status, headers to relay, body chunks."""

    status: int
    headers: dict[str, str]
    chunks: AsyncIterator[bytes]


class Engine:
    """Base class for engines. Subclass it and register the subclass with `register_engines`.

    Class attributes describe the engine; methods may be overridden. An engine instance is
    shared by all services using the engine, so it must not keep per-service state: everything
    it needs comes from the `Service` argument. Methods that take a `session` may do network
    I/O through it (and only through it); that session has a short total timeout. They may
    raise `aiohttp.ClientError`, `asyncio.TimeoutError` or `EngineError`, which the agent turns
    into "service down".
    """

    #: The name used in manifests (`engine: vllm`). Required.
    name: ClassVar[str] = ""
    #: One line shown by `inference-club-agent check` and in the docs.
    description: ClassVar[str] = ""
    #: Service types this engine can serve.
    service_types: ClassVar[frozenset[str]] = frozenset({"llm"})
    #: Features a service of this engine may declare (`features: [timestamps]`).
    features: ClassVar[frozenset[str]] = frozenset()
    #: Engine-specific keys allowed under a service's `options:`, with a description of each.
    options: ClassVar[Mapping[str, str]] = {}
    #: Local ports `inference-club-agent detect` probes for this engine.
    default_ports: ClassVar[tuple[int, ...]] = ()
    #: Lower probes first in `detect`; generic engines use a high value so specific ones win.
    probe_order: ClassVar[int] = 50

    # -- configuration -----------------------------------------------------------------------

    def check_service(self, service: Service) -> dict[str, str]:
        """Engine-specific validation of a manifest service.

        Return `{field: message}` for each problem (`field` is a service key such as
        `options.api` or `models`); an empty dict means the service is fine. No I/O.
        """
        problems: dict[str, str] = {}
        for key in service.options:
            if key not in self.options:
                allowed = ", ".join(sorted(self.options)) or "none"
                problems[f"options.{key}"] = (
                    f"unknown option {key!r} for engine {self.name!r} (allowed: {allowed})"
                )
        return problems

    def auth_headers(self, service: Service) -> dict[str, str]:
        """Headers that authenticate the agent to the engine (the service's `api_key`)."""
        return {"Authorization": f"Bearer {service.api_key}"} if service.api_key else {}

    # -- discovery and health ----------------------------------------------------------------

    async def discover_models(self, session: aiohttp.ClientSession, service: Service) -> list[str]:
        """The engine-side names of the models the service can serve right now.

        Called on every probe for services whose manifest lists no models. The default reads
        the OpenAI list at `{url}/models`.
        """
        data = await get_json(session, f"{service.base_url}/models", self.auth_headers(service))
        return openai_model_ids(data)

    async def health(self, session: aiohttp.ClientSession, service: Service) -> Health:
        """Whether the service can take requests now. The default asks `{url}/models`."""
        async with session.get(
            f"{service.base_url}/models", headers=self.auth_headers(service)
        ) as resp:
            if 200 <= resp.status < 300:
                return Health(True)
            return Health(False, f"GET {service.base_url}/models returned HTTP {resp.status}")

    async def load(self, session: aiohttp.ClientSession, service: Service) -> Load | None:
        """The service's load now: loaded models and queued requests, as far as it can tell.

        Called on every probe of a service that is up, after `health`. Return `None` (the
        default) when the engine has no way to tell; then the hub routes on its own count of
        requests in flight and the manifest's `max_concurrency`. May do network I/O through
        `session`; failures count as "cannot tell", never as "down".
        """
        return None

    # -- forwarding --------------------------------------------------------------------------

    def forward_path(self, service: Service, path: str) -> str:
        """Map an OpenAI path (relative to `/v1`, e.g. `/chat/completions`) to the engine's."""
        return path

    def forward_url(self, service: Service, request: EngineRequest) -> str:
        """The full URL a prepared request goes to."""
        url = service.base_url + request.path
        return f"{url}?{request.query}" if request.query else url

    def prepare_request(self, service: Service, request: EngineRequest) -> EngineRequest:
        """Translate a request before it is sent: path, headers, and if needed the body.

        The default maps the path with `forward_path` and adds `auth_headers`. Multipart bodies
        should be left byte for byte intact unless the engine really needs another shape.
        """
        return replace(
            request,
            path=self.forward_path(service, request.path),
            headers={**request.headers, **self.auth_headers(service)},
            notes=dict(request.notes),
        )

    def translate_response(
        self, service: Service, request: EngineRequest, response: EngineResponse
    ) -> EngineResponse:
        """Translate a successful (< 400) response before it is relayed. Default: unchanged.

        To change the body, wrap `response.chunks` in another async generator; never collect a
        streamed body in memory.
        """
        return response

    def normalise_error(
        self, service: Service, status: int, body: bytes, content_type: str
    ) -> dict[str, Any]:
        """Turn an engine error body into OpenAI's `{"error": {message, type, param, code}}`."""
        return normalise_error_body(status, body, content_type)

    def model_matches(self, service: Service, advertised: str, requested: str) -> bool:
        """Whether a request for `requested` may be served by the advertised name."""
        return advertised == requested

    # -- detection ---------------------------------------------------------------------------

    async def probe(self, session: aiohttp.ClientSession, root_url: str) -> Service | None:
        """Recognise this engine at `root_url` (e.g. `http://127.0.0.1:8000`).

        Return a suggested `Service` (name, type, url, options) when the server there is this
        engine, else `None`. Used by `inference-club-agent detect`. The default recognises
        nothing.
        """
        return None


# -- helpers for engines ---------------------------------------------------------------------


async def get_json(
    session: aiohttp.ClientSession, url: str, headers: Mapping[str, str] | None = None
) -> Any:
    """GET `url` and decode its JSON body; `EngineError` on a non-2xx status or bad JSON."""
    async with session.get(url, headers=dict(headers or {})) as resp:
        body = await resp.read()
        if not 200 <= resp.status < 300:
            raise EngineError(f"GET {url} returned HTTP {resp.status}")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise EngineError(f"GET {url} did not return JSON") from exc


def openai_model_ids(data: Any) -> list[str]:
    """Ids from an OpenAI model list. Tolerates `"data": null` and items without extras."""
    if not isinstance(data, dict):
        raise EngineError("model list is not a JSON object")
    items = data.get("data") or []
    if not isinstance(items, list):
        raise EngineError("model list `data` is not a list")
    return [str(m["id"]) for m in items if isinstance(m, dict) and m.get("id")]


def owned_by(data: Any) -> set[str]:
    """The `owned_by` values of an OpenAI model list (used by probes to tell servers apart)."""
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        return set()
    return {str(m.get("owned_by")) for m in data["data"] if isinstance(m, dict)}
