"""Plain records the store returns. Handlers and services only ever see these."""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class User:
    id: int
    login: str
    github_id: int | None
    created_at: float


@dataclass(frozen=True)
class ApiKey:
    """A key as listed: never the key itself, never its hash."""

    id: int
    user_id: int
    name: str
    prefix: str
    created_at: float
    last_used_at: float | None
    revoked_at: float | None
    #: ``all``, ``inference`` or ``agent`` (see ``inferclub.hub.keys``).
    scope: str = "all"

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class KeyOwner:
    """What authenticating a key yields (``key_id`` is None for a dashboard session)."""

    key_id: int | None
    user_id: int
    login: str
    #: What the key may do; a dashboard session may do everything its user may.
    scope: str = "all"


@dataclass(frozen=True)
class ServiceInfo:
    name: str
    type: str
    engine: str
    features: tuple[str, ...] = ()
    models: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProviderRecord:
    id: int
    user_id: int
    name: str
    callback_url: str
    agent_version: str
    health: dict[str, Any]
    created_at: float
    last_heartbeat_at: float
    services: tuple[ServiceInfo, ...] = ()
    #: The key whose heartbeats own this name (None: not bound yet, or its key was revoked).
    key_id: int | None = None
    #: How the hub reaches it: ``callback`` (its callback URL) or ``tunnel`` (it dialled in).
    transport: str = "callback"


@dataclass(frozen=True)
class ProviderSeen:
    """When a provider was last heard from, by any hub sharing the store, and its health."""

    id: int
    user_id: int
    last_heartbeat_at: float
    #: As stored (JSON text): most rows a hub reads are not news to it, and are not parsed.
    health_json: str


@dataclass(frozen=True)
class ProviderChanges:
    """What :meth:`Store.provider_changes` found: cheap to ask for when nothing changed."""

    #: Bumped by every stored description and every deletion (a store-wide counter).
    version: int
    #: Bumped by every batch of last-seen times.
    seen_version: int
    #: Providers heard from after the time asked about, oldest id first.
    seen: list[ProviderSeen]

    def same_versions(self, other: ProviderChanges | None) -> bool:
        return other is not None and (self.version, self.seen_version) == (
            other.version,
            other.seen_version,
        )


@dataclass
class RequestRecord:
    """One row of request history: metadata only, no content."""

    id: str
    user_id: int
    endpoint: str
    started_at: float
    status: int = 0
    key_id: int | None = None
    provider_id: int | None = None
    service: str | None = None
    type: str | None = None
    model: str | None = None
    error_type: str | None = None
    ttfb_ms: float | None = None
    duration_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    audio_seconds: float | None = None
    images: int | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    #: The client went away before the answer was complete (never set for a cut by the hub).
    cancelled: bool = False
    #: The error's code, e.g. ``upstream_error`` or ``server_shutting_down``.
    error_code: str | None = None
    #: Providers tried (failover); None for rows from before failover, or never routed.
    attempts: int | None = None
    #: The model that served once a provider was tried: ``model``, or the fallback for it.
    served_model: str | None = None


@dataclass(frozen=True)
class Fallback:
    """A user's fallback model: ``fallback`` serves when ``model`` cannot be served now."""

    user_id: int
    model: str
    fallback: str


@dataclass(frozen=True)
class AuthToken:
    """A dashboard sign-in secret as stored: a session, a one-time link or an OAuth state."""

    kind: str
    user_id: int | None
    data: str
    created_at: float
    expires_at: float


@dataclass(frozen=True)
class RequestBucket:
    """Request history aggregated over one time bucket, for charts."""

    #: Start of the bucket, seconds since the epoch.
    start: float
    requests: int
    #: Requests that ended with a status of 400 or more.
    errors: int
    avg_ttfb_ms: float | None
    avg_duration_ms: float | None
    prompt_tokens: int
    completion_tokens: int


REQUEST_COLUMNS = (
    "id",
    "user_id",
    "key_id",
    "provider_id",
    "service",
    "type",
    "endpoint",
    "model",
    "status",
    "error_type",
    "started_at",
    "ttfb_ms",
    "duration_ms",
    "prompt_tokens",
    "completion_tokens",
    "audio_seconds",
    "images",
    "bytes_in",
    "bytes_out",
    "cancelled",
    "error_code",
    "attempts",
    "served_model",
)


#: The conflict clause of both backends' provider upsert (``INSERT INTO providers (...,
#: key_id) VALUES (...)``): a heartbeat updates its provider unless the name is bound to
#: another key that is still active; then no row comes back, and nothing changed. A heartbeat
#: without a key (``key_id`` NULL) keeps the binding.
UPSERT_PROVIDER = (
    "ON CONFLICT (user_id, name) DO UPDATE SET callback_url = excluded.callback_url,"
    " agent_version = excluded.agent_version, health = excluded.health,"
    " last_heartbeat_at = excluded.last_heartbeat_at, transport = excluded.transport,"
    " key_id = coalesce(excluded.key_id, providers.key_id)"
    " WHERE excluded.key_id IS NULL OR providers.key_id IS NULL"
    " OR providers.key_id = excluded.key_id"
    " OR NOT EXISTS (SELECT 1 FROM api_keys k"
    " WHERE k.id = providers.key_id AND k.revoked_at IS NULL)"
)


def request_values(record: RequestRecord) -> tuple[Any, ...]:
    """``record`` as a row in ``REQUEST_COLUMNS`` order, every text storable by each backend.

    A client's request can put any string in a row (the ``model`` it asked for). One that a
    database refuses (a lone surrogate; NUL for PostgreSQL) would fail its whole history
    batch, and again on every retry, so such characters become U+FFFD. Once per request:
    one lookup of all columns, and one search over all the row's texts at once.
    """
    row: tuple[Any, ...] = _ROW(record)
    # Every column as text, in C: a number's, None's or a bool's text has neither character.
    if _UNSTORABLE.search("".join(map(str, row))):
        return tuple(_storable(v) for v in row)
    return row


def _storable(value: Any) -> Any:
    return _UNSTORABLE.sub("\ufffd", value) if isinstance(value, str) else value


_ROW = operator.attrgetter(*REQUEST_COLUMNS)
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def assemble_providers(
    prows: Iterable[Any], srows: Iterable[Any], mrows: Iterable[Any]
) -> list[ProviderRecord]:
    """Providers with their services and models from the three queries each backend runs
    (rows indexable by column name and position: ``sqlite3.Row``, ``asyncpg.Record``), in the
    order of ``prows``; services and models in the order their queries return them."""
    models: dict[int, list[str]] = {}
    for m in mrows:
        models.setdefault(m[0], []).append(m[1])
    services: dict[int, list[ServiceInfo]] = {}
    for s in srows:
        services.setdefault(s["provider_id"], []).append(
            ServiceInfo(
                s["name"],
                s["type"],
                s["engine"],
                tuple(json.loads(s["features"])),
                tuple(models.get(s["id"], ())),
            )
        )
    return [
        ProviderRecord(
            p["id"],
            p["user_id"],
            p["name"],
            p["callback_url"],
            p["agent_version"],
            json.loads(p["health"]),
            p["created_at"],
            p["last_heartbeat_at"],
            tuple(services.get(p["id"], ())),
            p["key_id"],
            p["transport"],
        )
        for p in prows
    ]


def provider_seen(rows: Iterable[Any]) -> list[ProviderSeen]:
    """``(id, user_id, last_heartbeat_at, health JSON)`` rows as records."""
    return [ProviderSeen(r[0], r[1], r[2], r[3]) for r in rows]


def provider_counters(rows: Iterable[Any]) -> ProviderChanges:
    """The ``READ_PROVIDER_COUNTERS`` rows as changes with nothing seen yet."""
    found = {r[0]: int(r[1]) for r in rows}
    return ProviderChanges(found.get("providers_version", 0), found.get("last_seen_version", 0), [])
