"""Which provider serves (user, type, model).

The registry lives in memory and is updated by every heartbeat, so routing never touches the
database. Order is stable and documented: among a user's online providers, the oldest provider
(first registered) wins; within a provider, services in the agent's manifest order.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from inferclub.hub.store import ProviderRecord, ServiceInfo
from inferclub.openai_errors import OpenAIError, model_not_found


@dataclass(frozen=True)
class Route:
    provider: ProviderRecord
    service: ServiceInfo


@dataclass
class _UserIndex:
    providers: list[ProviderRecord] = field(default_factory=list)
    #: (type, model) -> candidates in routing order
    by_type_model: dict[tuple[str, str], list[Route]] = field(default_factory=dict)
    #: model -> types it is served as (any provider, online or not)
    types_of: dict[str, list[str]] = field(default_factory=dict)


class Registry:
    def __init__(self, online_window: float) -> None:
        self.online_window = online_window
        self._users: dict[int, _UserIndex] = {}

    def load(self, providers: Iterable[ProviderRecord]) -> None:
        """Replace the registry with the store's providers (in routing order).

        Called at start and then periodically, so heartbeats received by another hub
        instance sharing the store are seen here too. A provider whose heartbeat this
        instance saw more recently than the store's copy keeps the newer state, and only
        users whose providers changed get their index rebuilt.
        """
        current = {p.id: p for idx in self._users.values() for p in idx.providers}
        grouped: dict[int, list[ProviderRecord]] = {}
        for p in providers:
            mine = current.get(p.id)
            if mine is not None and mine.last_heartbeat_at > p.last_heartbeat_at:
                p = mine
            grouped.setdefault(p.user_id, []).append(p)
        users: dict[int, _UserIndex] = {}
        for uid, ps in grouped.items():
            old = self._users.get(uid)
            users[uid] = old if old is not None and old.providers == ps else _build(ps)
        self._users = users

    def update(self, provider: ProviderRecord) -> None:
        idx = self._users.get(provider.user_id)
        current = [p for p in idx.providers if p.id != provider.id] if idx else []
        current.append(provider)
        current.sort(key=lambda p: p.id)
        self._users[provider.user_id] = _build(current)

    def remove(self, user_id: int, provider_id: int) -> None:
        idx = self._users.get(user_id)
        if idx:
            self._users[user_id] = _build([p for p in idx.providers if p.id != provider_id])

    def providers(self, user_id: int) -> list[ProviderRecord]:
        idx = self._users.get(user_id)
        return list(idx.providers) if idx else []

    def is_online(self, provider: ProviderRecord, now: float | None = None) -> bool:
        return ((now or time.time()) - provider.last_heartbeat_at) < self.online_window

    def route(self, user_id: int, type_: str, model: str) -> Route:
        """The first online candidate, or a 404/503 ``OpenAIError`` that says why there is none."""
        idx = self._users.get(user_id)
        if idx is not None:
            candidates = idx.by_type_model.get((type_, model))
            if candidates:
                now = time.time()
                for route in candidates:
                    if now - route.provider.last_heartbeat_at < self.online_window:
                        return route
                newest = max(r.provider.last_heartbeat_at for r in candidates)
                raise OpenAIError(
                    503,
                    f"The model `{model}` is served only by providers that are offline"
                    f" (last heartbeat {now - newest:.0f} s ago). Is the agent running?",
                    "service_unavailable",
                    "provider_offline",
                )
            other = [t for t in idx.types_of.get(model, ()) if t != type_]
            if other:
                raise OpenAIError(
                    404,
                    f"The model `{model}` is served as {' and '.join(other)}, not {type_}.",
                    "invalid_request_error",
                    "model_not_found",
                    "model",
                )
        raise model_not_found(model)

    def models(self, user_id: int) -> list[tuple[str, str, ProviderRecord]]:
        """``(model, type, provider)`` of online providers, each (model, type) once."""
        idx = self._users.get(user_id)
        if idx is None:
            return []
        now = time.time()
        seen: set[tuple[str, str]] = set()
        out = []
        for p in idx.providers:
            if not self.is_online(p, now):
                continue
            for svc in p.services:
                for m in svc.models:
                    if (m, svc.type) not in seen:
                        seen.add((m, svc.type))
                        out.append((m, svc.type, p))
        return out


def _build(providers: list[ProviderRecord]) -> _UserIndex:
    idx = _UserIndex(providers=providers)
    for p in providers:
        for svc in p.services:
            for m in svc.models:
                idx.by_type_model.setdefault((svc.type, m), []).append(Route(p, svc))
                types = idx.types_of.setdefault(m, [])
                if svc.type not in types:
                    types.append(svc.type)
    return idx
