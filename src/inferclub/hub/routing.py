"""Which provider serves (user, type, model).

The registry lives in memory and is updated by every heartbeat, so routing never touches the
database. Order is stable and documented: among a user's online providers, the oldest provider
(first registered) wins; within a provider, services in the agent's manifest order.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from inferclub.hub.store import ProviderRecord, ServiceInfo
from inferclub.openai_errors import OpenAIError, model_not_found


class Current:
    """The newest record of one provider, shared by all its routes: a steady heartbeat swaps
    it once instead of rebuilding a route per model (a provider may list 1,024)."""

    __slots__ = ("record",)

    def __init__(self, record: ProviderRecord) -> None:
        self.record = record


@dataclass(frozen=True)
class Route:
    current: Current
    service: ServiceInfo

    @property
    def provider(self) -> ProviderRecord:
        return self.current.record


@dataclass
class _UserIndex:
    #: in routing order (by id)
    providers: list[ProviderRecord] = field(default_factory=list)
    by_id: dict[int, ProviderRecord] = field(default_factory=dict)
    by_name: dict[str, ProviderRecord] = field(default_factory=dict)
    #: (type, model) -> candidates in routing order
    by_type_model: dict[tuple[str, str], list[Route]] = field(default_factory=dict)
    #: model -> types it is served as (any provider, online or not)
    types_of: dict[str, list[str]] = field(default_factory=dict)
    #: provider id -> the record its routes read
    current: dict[int, Current] = field(default_factory=dict)


class Registry:
    def __init__(self, online_window: float) -> None:
        self.online_window = online_window
        self._users: dict[int, _UserIndex] = {}
        #: Called with a user id when that user's candidates may have grown (a provider new,
        #: back online, or with other services): the hub wakes the user's waiting requests.
        self.on_grown: Callable[[int], None] = lambda user_id: None

    def load(self, providers: Iterable[ProviderRecord]) -> None:
        """Replace the registry with the store's providers (in routing order).

        Called at start and then periodically, so heartbeats received by another hub
        instance sharing the store are seen here too. A provider whose heartbeat this
        instance saw more recently than the store's copy keeps the newer state, and only
        users whose providers changed get their index rebuilt.
        """
        grouped: dict[int, list[ProviderRecord]] = {}
        old_users = self._users
        for p in providers:
            old = self._users.get(p.user_id)
            mine = old.by_id.get(p.id) if old is not None else None
            if mine is not None and mine.last_heartbeat_at > p.last_heartbeat_at:
                p = mine
            grouped.setdefault(p.user_id, []).append(p)
        users: dict[int, _UserIndex] = {}
        for uid, ps in grouped.items():
            old = self._users.get(uid)
            users[uid] = old if old is not None and old.providers == ps else _build(ps)
        self._users = users
        for uid, idx in users.items():
            if idx is not old_users.get(uid):
                self.on_grown(uid)

    def update(self, provider: ProviderRecord) -> None:
        """Apply one provider's new state. The cost grows with the provider's own models, not
        with how many providers its user has: a user with thousands of providers sends
        thousands of heartbeats a minute."""
        idx = self._users.setdefault(provider.user_id, _UserIndex())
        old = idx.by_id.get(provider.id)
        if old is None:
            _index(idx, provider)
        elif old.name == provider.name and old.services == provider.services:
            _replace(idx, provider)  # the steady-state heartbeat: same place everywhere
        else:
            _unindex(idx, old, keep_order=old.services == provider.services)
            _index(idx, provider)
        if old is None or old.services != provider.services or not self.is_online(old):
            self.on_grown(provider.user_id)

    def get(self, user_id: int, provider_id: int) -> ProviderRecord | None:
        idx = self._users.get(user_id)
        return idx.by_id.get(provider_id) if idx is not None else None

    def find(self, user_id: int, name: str) -> ProviderRecord | None:
        """The user's provider called ``name``, if known."""
        idx = self._users.get(user_id)
        return idx.by_name.get(name) if idx is not None else None

    def remove(self, user_id: int, provider_id: int) -> None:
        idx = self._users.get(user_id)
        old = idx.by_id.get(provider_id) if idx is not None else None
        if idx is not None and old is not None:
            _unindex(idx, old, keep_order=False)

    def ids(self) -> list[tuple[int, int]]:
        """``(user id, provider id)`` of every provider known."""
        return [(uid, pid) for uid, idx in self._users.items() for pid in idx.by_id]

    def providers(self, user_id: int) -> list[ProviderRecord]:
        idx = self._users.get(user_id)
        return list(idx.providers) if idx else []

    def all_providers(self) -> Iterator[ProviderRecord]:
        """Every user's providers (for metrics at scrape time, never on a request path)."""
        for idx in self._users.values():
            yield from idx.providers

    def is_online(self, provider: ProviderRecord, now: float | None = None) -> bool:
        return ((now or time.time()) - provider.last_heartbeat_at) < self.online_window

    def route(self, user_id: int, type_: str, model: str) -> Route:
        """The first online candidate, or a 404/503 ``OpenAIError`` that says why there is none."""
        return self.candidates(user_id, type_, model)[0]

    def candidates(self, user_id: int, type_: str, model: str) -> list[Route]:
        """Every online service of the user that serves ``model`` as ``type_``, in routing
        order; a 503 ``model_unavailable`` when only offline ones do, a 404 when none does."""
        idx = self._users.get(user_id)
        if idx is not None:
            candidates = idx.by_type_model.get((type_, model))
            if candidates:
                now = time.time()
                online = [r for r in candidates if self.is_online(r.provider, now)]
                if online:
                    return online
                raise model_unavailable(
                    model,
                    [
                        f"{r.provider.name}: agent gone (last heartbeat "
                        f"{now - r.provider.last_heartbeat_at:.0f} s ago)"
                        for r in candidates
                    ],
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
        raise not_found(model, type_, self.model_ids(user_id, type_))

    def model_ids(self, user_id: int, type_: str) -> list[str]:
        """The models of ``type_`` that the user's online providers serve, each once."""
        return list(dict.fromkeys(m for m, t, _ in self.models(user_id) if t == type_))

    def models(
        self, user_id: int, skip: Callable[[ProviderRecord], bool] | None = None
    ) -> list[tuple[str, str, ProviderRecord]]:
        """``(model, type, provider)`` of online providers, each (model, type) once, with
        the first provider that is neither offline nor ``skip``ped."""
        idx = self._users.get(user_id)
        if idx is None:
            return []
        now = time.time()
        seen: set[tuple[str, str]] = set()
        out = []
        for p in idx.providers:
            if not self.is_online(p, now) or (skip is not None and skip(p)):
                continue
            for svc in p.services:
                for m in svc.models:
                    if (m, svc.type) not in seen:
                        seen.add((m, svc.type))
                        out.append((m, svc.type, p))
        return out


#: Models a 404 lists at most.
LISTED_MODELS = 20
#: Seconds a client is asked to wait when no provider can serve now and none cools down.
RETRY_UNAVAILABLE = 5


def not_found(model: str, type_: str, available: list[str]) -> OpenAIError:
    """A 404 ``model_not_found`` that lists (some of) the models of ``type_`` the user has."""
    base = model_not_found(model)
    if available:
        shown = ", ".join(f"`{m}`" for m in available[:LISTED_MODELS])
        extra = len(available) - LISTED_MODELS
        listing = f"Your {type_} models: {shown}{f' and {extra} more' if extra > 0 else ''}."
    else:
        listing = f"None of your providers serves a model of type {type_} now."
    return OpenAIError(404, f"{base.message} {listing}", base.type, base.code, base.param)


def model_unavailable(
    model: str, reasons: list[str], retry_after: int | None = None
) -> OpenAIError:
    """A 503 ``model_unavailable``: the model is the user's, but no provider can serve it now.
    ``reasons`` name each provider and why (``rig: engine down (...)``)."""
    return OpenAIError(
        503,
        f"The model `{model}` cannot be served right now: {'; '.join(reasons)}.",
        "service_unavailable",
        "model_unavailable",
        "model",
        headers={"Retry-After": str(retry_after or RETRY_UNAVAILABLE)},
    )


def _build(providers: list[ProviderRecord]) -> _UserIndex:
    idx = _UserIndex(providers=providers)
    for p in providers:
        idx.by_id[p.id] = p
        idx.by_name[p.name] = p
        idx.current[p.id] = Current(p)
        for key, routes in _routes_of(idx.current[p.id]).items():
            idx.by_type_model.setdefault(key, []).extend(routes)
            types = idx.types_of.setdefault(key[1], [])
            if key[0] not in types:
                types.append(key[0])
    return idx


def _routes_of(current: Current) -> dict[tuple[str, str], list[Route]]:
    """The provider's candidates per (type, model), in manifest order."""
    out: dict[tuple[str, str], list[Route]] = {}
    for svc in current.record.services:
        for m in svc.models:
            out.setdefault((svc.type, m), []).append(Route(current, svc))
    return out


def _keys_of(p: ProviderRecord) -> dict[tuple[str, str], None]:
    """The (type, model) keys the provider is indexed under, in manifest order."""
    return {(svc.type, m): None for svc in p.services for m in svc.models}


def _by_id(item: ProviderRecord | Route) -> int:
    return item.provider.id if isinstance(item, Route) else item.id


def _span(items: list[Any], provider_id: int) -> slice:
    """Where ``provider_id``'s entries are in a list kept in routing (id) order."""
    lo = bisect.bisect_left(items, provider_id, key=_by_id)
    return slice(lo, bisect.bisect_right(items, provider_id, lo=lo, key=_by_id))


def _unindex(idx: _UserIndex, p: ProviderRecord, keep_order: bool) -> None:
    """Take ``p`` out of the index. With ``keep_order`` (its services stay the same) the
    emptied keys are kept, so ``types_of`` keeps its order for the re-index that follows."""
    del idx.providers[_span(idx.providers, p.id)]
    del idx.by_id[p.id]
    del idx.current[p.id]
    if idx.by_name.get(p.name) is p:
        del idx.by_name[p.name]
    for key in _keys_of(p):
        routes = idx.by_type_model[key]
        del routes[_span(routes, p.id)]
        if routes or keep_order:
            continue
        del idx.by_type_model[key]
        type_, model = key
        types = idx.types_of[model]
        types.remove(type_)
        if not types:
            del idx.types_of[model]


def _replace(idx: _UserIndex, p: ProviderRecord) -> None:
    """Swap in ``p`` where its previous record (same name and services) is indexed: its
    routes read it through their shared :class:`Current`, so none is touched."""
    idx.providers[bisect.bisect_left(idx.providers, p.id, key=_by_id)] = p
    idx.by_id[p.id] = p
    idx.by_name[p.name] = p
    idx.current[p.id].record = p


def _index(idx: _UserIndex, p: ProviderRecord) -> None:
    at = _span(idx.providers, p.id)
    idx.providers[at] = [p]
    idx.by_id[p.id] = p
    idx.by_name[p.name] = p
    idx.current[p.id] = current = Current(p)
    for key, new in _routes_of(current).items():
        routes = idx.by_type_model.setdefault(key, [])
        routes[_span(routes, p.id)] = new
        types = idx.types_of.setdefault(key[1], [])
        if key[0] not in types:
            types.append(key[0])
