"""The hub<->agent contract, once: both programs import it, so the two sides cannot drift.

- An agent ``POST``\\ s a :class:`Heartbeat` to :data:`HEARTBEAT_PATH` with its API key and gets a
  :class:`HeartbeatReply` back, with its ``provider_id`` and the ``hub_key`` that signs every
  request the hub sends to the agent (:mod:`inferclub.signing`, ``docs/signing.md``).
- The hub sends each consumer request to ``<callback_url><endpoint>`` with the same body, naming
  the chosen service in :data:`SERVICE_HEADER`. Which service type an endpoint needs is
  :data:`ENDPOINT_TYPES`.
- Third-party agents exist: the JSON field names here are a published protocol (README,
  "The agent protocol") and only ever grow. (One exception: the bearer ``callback_token`` was
  withdrawn when signed requests replaced it, since a token that still worked was the hole.)

:meth:`Heartbeat.parse` validates a whole heartbeat before anything is stored and names the bad
field by its path (``services[1].type``) so an agent author can fix it at once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

#: Service types a provider can advertise, in the order messages list them; ``llm`` is the
#: default. ``embedding`` goes beyond inference.club's four.
SERVICE_TYPES: tuple[str, ...] = ("llm", "stt", "image", "tts", "embedding")

#: The OpenAI endpoints (relative to ``/v1``) the hub routes to agents, and the service type
#: each needs. The hub serves exactly these paths; an agent asked for a path without
#: :data:`SERVICE_HEADER` picks its service by this type and the body's ``model``.
ENDPOINT_TYPES: Mapping[str, str] = MappingProxyType(
    {
        "/chat/completions": "llm",
        "/completions": "llm",
        "/responses": "llm",
        # Rerankers are served by the LLM servers (llama-server --reranking, vLLM).
        "/rerank": "llm",
        "/embeddings": "embedding",
        "/audio/transcriptions": "stt",
        "/audio/translations": "stt",
        "/audio/speech": "tts",
        "/images/generations": "image",
        "/images/edits": "image",
    }
)


def endpoints_for(service_type: str) -> list[str]:
    """The ``/v1`` paths a model served as ``service_type`` can be used with."""
    return ["/v1" + path for path, kind in ENDPOINT_TYPES.items() if kind == service_type]


#: Where agents send heartbeats (on the hub).
HEARTBEAT_PATH = "/v1/agent/heartbeat"
#: Where anyone can read the hub's public signing key (on the hub).
HUB_KEY_PATH = "/v1/agent/hub-key"

# -- headers ---------------------------------------------------------------------------------

#: hub -> agent: the name of the service that must serve the request.
SERVICE_HEADER = "X-InferClub-Service"
#: agent -> hub: ``Bearer <API key>``. (The hub signs its requests to agents instead.)
AUTH_HEADER = "Authorization"
#: hub -> agent and hub -> client: the request's id (also its history row id).
REQUEST_ID_HEADER = "X-Request-Id"
#: hub -> client: the name of the provider (agent) that served the request.
PROVIDER_HEADER = "X-InferClub-Provider"
#: hub -> client: ``verbose_json->text`` when a transcription format was downgraded.
DOWNGRADED_HEADER = "X-InferClub-Downgraded"
#: hub -> client: how many providers the hub tried for this request (failover).
ATTEMPTS_HEADER = "X-InferClub-Attempts"
#: hub -> client: the model that served, when a fallback model stood in for the one asked.
SERVED_MODEL_HEADER = "X-InferClub-Served-Model"
#: The prefix of the project's headers (any case). Of those an agent sends, the hub relays
#: only :data:`DOWNGRADED_HEADER` to the client.
HEADER_PREFIX = "x-inferclub-"

# -- request bodies ----------------------------------------------------------------------------

MB = 1024 * 1024
#: OpenAI accepts up to 16 images per edit, and a mask.
MAX_EDIT_IMAGES = 16
#: Room for the multipart framing and the text fields of an upload.
FORM_OVERHEAD = MB
#: The hub's default body limits (settings ``max_json_body``, ``max_audio_body``,
#: ``max_image_body``); the agent accepts what a hub with these defaults forwards.
DEFAULT_MAX_JSON_BODY = 10 * MB
DEFAULT_MAX_AUDIO_BODY = 25 * MB
DEFAULT_MAX_IMAGE_BODY = 20 * MB
#: The hub's default for every route outside ``/v1`` (sign-in, dashboard forms; setting
#: ``max_web_body``): a form there holds a label or a token, never an upload.
DEFAULT_MAX_WEB_BODY = 64 * 1024


def image_edit_body_limit(max_image_body: int) -> int:
    """The largest image-edit body: every image and the mask at their limit, plus the form."""
    return max_image_body * (MAX_EDIT_IMAGES + 1) + FORM_OVERHEAD


def body_ceiling(max_json_body: int, max_audio_body: int, max_image_body: int) -> int:
    """What an HTTP server lets any request send: past the largest endpoint limit, so that each
    endpoint (not the server's bare 400) answers an oversize body with its OpenAI 413."""
    largest = max(max_json_body, max_audio_body, image_edit_body_limit(max_image_body))
    return largest + FORM_OVERHEAD


DEFAULT_BODY_CEILING = body_ceiling(
    DEFAULT_MAX_JSON_BODY, DEFAULT_MAX_AUDIO_BODY, DEFAULT_MAX_IMAGE_BODY
)

# -- limits of a heartbeat ---------------------------------------------------------------------

# One tenant's heartbeat must stay cheap for the hub to store and route on: these bound it.

#: Services per provider.
MAX_SERVICES = 64
#: Models per provider, over all its services.
MAX_MODELS = 1024
#: Characters of a model id (here and in the ``model`` of an inference request).
MAX_MODEL_ID = 256
MAX_FEATURES = 64
#: The largest ``max_concurrency`` and ``queue`` a service may report.
MAX_CONCURRENCY = 100_000
MAX_DETAIL = 200
MAX_HEALTH_BYTES = 64 * 1024
#: Provider and service names, as the agent manifest allows them.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = "letters, digits, '.', '_' and '-', at most 64 characters"
#: Characters no text field may hold. One regular-expression scan instead of a Python loop
#: per character: every heartbeat checks a few dozen strings.
_BAD_CHAR = re.compile("[\x00-\x1f\ud800-\udfff]")


def bearer(token: str) -> str:
    """The :data:`AUTH_HEADER` value that presents ``token``."""
    return f"Bearer {token}"


class PayloadError(ValueError):
    """A heartbeat field is invalid; ``field`` is its path, such as ``services[1].type``."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.field = where
        self.problem = problem


@dataclass(frozen=True)
class AdvertisedService:
    """One service as a heartbeat announces it."""

    name: str
    type: str = "llm"
    engine: str = "openai"
    features: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    #: Requests the service takes at once (the manifest's ``max_concurrency``); None: no limit.
    max_concurrency: int | None = None
    #: Requests waiting inside the engine, where the engine can tell; None: unknown.
    queue: int | None = None
    #: The advertised models loaded in memory now ("hot"), where the engine can tell.
    loaded: tuple[str, ...] | None = None
    #: In a heartbeat's ``down`` list: why the service is down (``cannot connect to ...``).
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "engine": self.engine,
            "features": list(self.features),
            "models": list(self.models),
        }
        # Optional fields only when set: a heartbeat without them is what older agents send.
        if self.max_concurrency is not None:
            out["max_concurrency"] = self.max_concurrency
        if self.queue is not None:
            out["queue"] = self.queue
        if self.loaded is not None:
            out["loaded"] = list(self.loaded)
        if self.detail:
            out["detail"] = self.detail
        return out

    def description(self) -> AdvertisedService:
        """This service without its load (queue, loaded models), which changes all the time:
        an agent beats at once when the description changes, not when the load does."""
        return replace(self, queue=None, loaded=None)

    @classmethod
    def parse(cls, raw: Any, where: str) -> AdvertisedService:
        """Validate one entry of ``services``; ``where`` is its path (``services[1]``)."""
        if not isinstance(raw, dict):
            raise PayloadError(where, "must be an object")
        name = _name(raw.get("name"), f"{where}.name")
        stype = raw.get("type", "llm")
        if stype not in SERVICE_TYPES:
            raise PayloadError(
                f"{where}.type", f"must be one of {', '.join(SERVICE_TYPES)}, not {stype!r}"
            )
        return cls(
            name,
            stype,
            _text(raw.get("engine", "openai"), f"{where}.engine", 100),
            _text_list(raw.get("features"), f"{where}.features", MAX_FEATURES),
            _text_list(raw.get("models"), f"{where}.models", MAX_MODELS, MAX_MODEL_ID),
            _count(raw.get("max_concurrency"), f"{where}.max_concurrency", minimum=1),
            _count(raw.get("queue"), f"{where}.queue", minimum=0),
            None
            if raw.get("loaded") is None
            else _text_list(raw.get("loaded"), f"{where}.loaded", MAX_MODELS, MAX_MODEL_ID),
            _text(raw.get("detail"), f"{where}.detail", MAX_DETAIL, required=False),
        )


@dataclass(frozen=True)
class Heartbeat:
    """What an agent sends: who it is, where the hub reaches it, and its live services."""

    name: str
    callback_url: str
    version: str = ""
    services: tuple[AdvertisedService, ...] = ()
    #: Free-form health snapshot shown in the dashboard (no secrets, at most 64 KiB of JSON).
    health: dict[str, Any] = field(default_factory=dict)
    #: Services whose engine is down, with their last known models and ``detail``: the hub
    #: answers a request for those models with 503 ``model_unavailable``, not 404.
    down: tuple[AdvertisedService, ...] = ()
    #: The agent's goodbye: it is shutting down, so the hub routes no new request to it (the
    #: ones in flight finish). Its next ordinary heartbeat, if any, takes it back.
    leaving: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "callback_url": self.callback_url,
            "version": self.version,
            "services": [s.to_json() for s in self.services],
            "health": self.health,
        }
        if self.down:
            out["down"] = [s.to_json() for s in self.down]
        if self.leaving:
            out["leaving"] = True
        return out

    @classmethod
    def parse(cls, data: Any, known: KnownServices | None = None) -> Heartbeat:
        """Validate a whole heartbeat; raises :class:`PayloadError` naming the first bad field.

        ``known`` is a ``services`` list as received before and what it validated to: when
        this beat's list equals it, that result is reused instead of checking up to 1,024
        model ids again (a steady agent sends the same list every beat)."""
        if not isinstance(data, dict):
            raise PayloadError("heartbeat", "must be a JSON object")
        raw = data.get("services", [])
        return cls(
            _name(data.get("name"), "name"),
            _callback_url(data.get("callback_url")),
            _text(data.get("version"), "version", 100, required=False),
            known[1] if known is not None and raw == known[0] else _services(raw),
            _health(data.get("health", {})),
            _services(data.get("down") or [], "down"),
            _flag(data.get("leaving"), "leaving", default=False),
        )


#: A heartbeat's ``services`` as received (JSON values) and as validated. Equal JSON values
#: validate alike: every field checked is a string or a list of strings, and a string equals
#: only a string, so an equal list cannot hold anything the first one did not pass.
KnownServices = tuple[Any, tuple[AdvertisedService, ...]]


@dataclass(frozen=True)
class HeartbeatReply:
    """What the hub answers an accepted heartbeat."""

    provider_id: int | None
    #: The hub's public signing key, ``ed25519:...`` (``docs/signing.md``).
    hub_key: str
    #: Seconds between beats the hub expects, and after which it sees the agent as offline.
    heartbeat_interval: float | None = None
    online_window: float | None = None
    #: False, with the reason in ``callback_error``, when the hub cannot reach ``callback_url``;
    #: None when it did not check this time (its probe budget), the reason in ``callback_error``.
    callback_reachable: bool | None = True
    callback_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "provider_id": self.provider_id,
            "hub_key": self.hub_key,
            "heartbeat_interval": self.heartbeat_interval,
            "online_window": self.online_window,
            "callback_reachable": self.callback_reachable,
        }
        if self.callback_error is not None:
            out["callback_error"] = self.callback_error
        return out

    @classmethod
    def parse(cls, data: Any) -> HeartbeatReply:
        """Read a reply leniently (a newer hub may add fields or drop optional ones); only a
        missing ``hub_key`` or ``provider_id`` is an error, since requests cannot be checked
        without them."""
        if not isinstance(data, dict):
            raise PayloadError("reply", "must be a JSON object")
        hub_key = data.get("hub_key")
        if not isinstance(hub_key, str) or not hub_key:
            raise PayloadError("hub_key", "is missing (a hub older than this agent?)")
        provider_id = data.get("provider_id")
        if isinstance(provider_id, bool) or not isinstance(provider_id, int):
            raise PayloadError("provider_id", "is missing")
        error = data.get("callback_error")
        reachable = data.get("callback_reachable", True)
        return cls(
            provider_id,
            hub_key,
            _positive(data.get("heartbeat_interval")),
            _positive(data.get("online_window")),
            None if reachable is None else reachable is not False,
            str(error) if error else None,
        )


# -- validation helpers ------------------------------------------------------------------------


def _text(value: Any, where: str, max_len: int, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise PayloadError(where, "must be a string")
    text = value.strip()
    if required and not text:
        raise PayloadError(where, "must not be empty")
    if len(text) > max_len:
        raise PayloadError(where, f"must be at most {max_len} characters")
    if _has_bad_char(text):
        if any(ord(c) < 32 for c in text):
            raise PayloadError(where, "must not contain control characters")
        raise PayloadError(where, "must not contain lone surrogates")
    return text


def _name(value: Any, where: str) -> str:
    name = _text(value, where, 64)
    if not NAME.fullmatch(name):
        raise PayloadError(where, f"must use {NAME_RULE}")
    return name


def _text_list(value: Any, where: str, max_items: int, max_len: int = 512) -> tuple[str, ...]:
    """A list of strings, each once, in order."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise PayloadError(where, "must be a list of strings")
    if len(value) > max_items:
        raise PayloadError(where, f"must have at most {max_items} entries")
    fast = _clean_texts(value, max_len)
    if fast is not None:
        return fast
    out: dict[str, None] = {}
    for i, item in enumerate(value):
        out[_text(item, f"{where}[{i}]", max_len)] = None
    return tuple(out)


def _clean_texts(value: list[Any], max_len: int) -> tuple[str, ...] | None:
    """What :func:`_text_list` returns for a list every item of which is fine, checked in bulk
    (C loops: a provider lists up to 1,024 models at every heartbeat); None when some item is
    not, and the loop over the items names the first bad one."""
    try:
        texts = list(map(str.strip, value))
    except TypeError:  # an item is not a string
        return None
    if not texts:
        return ()
    if "" in texts or max(map(len, texts)) > max_len or _has_bad_char(" ".join(texts)):
        return None
    return tuple(dict.fromkeys(texts))


def _has_bad_char(text: str) -> bool:
    """Whether ``text`` holds a character :data:`_BAD_CHAR` refuses. Printable ASCII (model ids,
    nearly always) is told in one C pass, several times faster than the regular expression."""
    if text.isascii() and text.isprintable():
        return False
    return _BAD_CHAR.search(text) is not None


def _callback_url(value: Any) -> str:
    url = _text(value, "callback_url", 2000)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PayloadError("callback_url", "must be an http:// or https:// URL with a host")
    try:
        _ = parts.port
    except ValueError:
        raise PayloadError("callback_url", "has an invalid port") from None
    return url


def _services(value: Any, where: str = "services") -> tuple[AdvertisedService, ...]:
    if not isinstance(value, list):
        raise PayloadError(where, "must be a list")
    if len(value) > MAX_SERVICES:
        raise PayloadError(where, f"must have at most {MAX_SERVICES} entries")
    services: list[AdvertisedService] = []
    for i, raw in enumerate(value):
        service = AdvertisedService.parse(raw, f"{where}[{i}]")
        if any(s.name == service.name for s in services):
            raise PayloadError(f"{where}[{i}].name", f"duplicate service name {service.name!r}")
        services.append(service)
    if sum(len(s.models) for s in services) > MAX_MODELS:
        raise PayloadError(where, f"must list at most {MAX_MODELS} models in all")
    return tuple(services)


def _health(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PayloadError("health", "must be an object")
    if len(json.dumps(value)) > MAX_HEALTH_BYTES:
        raise PayloadError("health", f"must be at most {MAX_HEALTH_BYTES} bytes of JSON")
    return value


def _count(value: Any, where: str, minimum: int) -> int | None:
    """An optional whole number from ``minimum`` to :data:`MAX_CONCURRENCY`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(where, "must be a whole number")
    if not minimum <= value <= MAX_CONCURRENCY:
        raise PayloadError(where, f"must be from {minimum} to {MAX_CONCURRENCY}")
    return value


def _flag(value: Any, where: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise PayloadError(where, "must be true or false")
    return value


def _positive(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None
