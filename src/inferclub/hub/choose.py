"""Choosing among a user's services for one request: load, hot models, passive health.

The registry (:mod:`inferclub.hub.routing`) names the candidates: every online service of the
user that advertises the model for the type. :class:`Fleet` orders them, in memory and
without I/O, by

1. not at its capacity (a service at its ``max_concurrency`` comes last),
2. the most free capacity: ``max_concurrency`` minus the hub's own requests in flight to it
   minus the engine's reported queue (a service that reports no ``max_concurrency`` has no
   limit, so the most room; among those, the fewest requests in flight and queued win),
3. the service that served the conversation's previous turn (:mod:`~inferclub.hub.affinity`),
4. the model already loaded ("hot"), where the engine tells,
5. registration order (the registry's order: oldest provider first, then manifest order).

A provider whose agent is leaving (its goodbye heartbeat) is no candidate at all. A provider
that failed (could not be reached, answered 502 or 503) cools down: it is skipped for
``cooldown`` seconds, doubling on each further failure up to :data:`MAX_COOLDOWN`; then one
request tries it while others still skip it, and a success clears it.

All of this is bookkeeping of this hub process: several hub processes sharing a store each
count their own requests.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from inferclub import wire
from inferclub.hub.affinity import Affinity, Conversation, Served
from inferclub.hub.routing import Registry, Route, model_unavailable
from inferclub.openai_errors import OpenAIError

#: The longest a failing provider is skipped, in seconds.
MAX_COOLDOWN = 60.0
#: The free capacity of a service without ``max_concurrency``: more than any limited one.
UNBOUNDED = wire.MAX_CONCURRENCY * 2


@dataclass(frozen=True)
class ServiceLoad:
    """What the last heartbeat said of one service's load."""

    max_concurrency: int | None = None
    queue: int = 0
    #: Advertised names of the models loaded now; None when the engine cannot tell.
    loaded: frozenset[str] | None = None


@dataclass(frozen=True)
class DownService:
    """A service of an online agent whose engine is down: its models cannot be served now."""

    name: str
    type: str
    models: tuple[str, ...]
    detail: str


@dataclass(frozen=True)
class ProviderState:
    """The last heartbeat's news beyond the provider's stored description."""

    loads: Mapping[str, ServiceLoad] = field(default_factory=dict)
    down: tuple[DownService, ...] = ()
    leaving: bool = False

    @classmethod
    def of(cls, hb: wire.Heartbeat) -> ProviderState:
        loads = {
            s.name: ServiceLoad(
                s.max_concurrency, s.queue or 0, None if s.loaded is None else frozenset(s.loaded)
            )
            for s in hb.services
        }
        down = tuple(DownService(s.name, s.type, s.models, s.detail) for s in hb.down)
        return cls(loads, down, hb.leaving)


#: What an agent that tells nothing of its load (or has not beaten yet) is taken to say.
NO_LOAD = ServiceLoad()
NO_STATE = ProviderState()


def _room(load: ServiceLoad) -> int:
    limit = UNBOUNDED if load.max_concurrency is None else load.max_concurrency
    return limit - load.queue


def more_room(old: ProviderState | None, new: ProviderState) -> bool:
    """Whether a heartbeat may let a waiting request go: a provider heard from for the first
    time, back from leaving, or a service that is new (its engine back) or has more room
    than before (a higher ``max_concurrency``, a shorter queue)."""
    if old is None or (old.leaving and not new.leaving):
        return True
    for name, load in new.loads.items():
        was = old.loads.get(name)
        if was is None or _room(load) > _room(was):
            return True
    return False


@dataclass
class _Cooling:
    failures: int
    until: float
    #: A request is trying the provider again after its cooldown.
    trial: bool = False


#: Seconds a client refused with ``all_providers_busy`` is asked to wait.
RETRY_BUSY = 5


def all_busy(message: str) -> OpenAIError:
    return OpenAIError(
        429,
        message,
        "rate_limit_error",
        "all_providers_busy",
        headers={"Retry-After": str(RETRY_BUSY)},
    )


class WaitQueue:
    """Requests waiting until a service of their user frees up: per user, bounded, in
    arrival order. A freed service (a request of this hub ended, or a heartbeat brought more
    capacity or another candidate) wakes the user's waiters in that order; each checks
    whether it can go now, and the first that can takes the service before the next one
    looks (no await between its check and counting its request in flight)."""

    def __init__(self, timeout: float, max_per_user: int) -> None:
        self.timeout = timeout
        self.max_per_user = max_per_user
        self._waiting: dict[int, list[list[asyncio.Future[None]]]] = {}

    def waiting(self, user_id: int) -> int:
        return len(self._waiting.get(user_id, ()))

    def total(self) -> int:
        """Requests waiting now, of all users."""
        return sum(len(q) for q in self._waiting.values())

    async def wait(self, user_id: int, ready: Callable[[], list[Route] | None]) -> list[Route]:
        """``ready()`` once it returns routes: now, or after wake-ups, within ``timeout``;
        else a 429 ``all_providers_busy``. A cancelled waiter (its client left) leaves the
        queue."""
        queue = self._waiting.setdefault(user_id, [])
        if len(queue) >= self.max_per_user:
            self._drop(user_id, queue)
            raise all_busy(
                f"Every provider of this model is busy and {len(queue)} of your requests "
                "already wait for one; retry later."
            )
        loop = asyncio.get_running_loop()
        slot = [loop.create_future()]
        queue.append(slot)
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    await slot[0]
                    routes = ready()
                    if routes is not None:
                        return routes
                    slot[0] = loop.create_future()
        except TimeoutError:
            raise all_busy(
                f"Every provider of this model stayed busy for {self.timeout:g} s; retry later."
            ) from None
        finally:
            queue.remove(slot)
            self._drop(user_id, queue)

    def wake(self, user_id: int) -> None:
        """A service of the user may have room: its waiters look, in arrival order."""
        for slot in self._waiting.get(user_id, ()):
            if not slot[0].done():
                slot[0].set_result(None)

    def _drop(self, user_id: int, queue: list[list[asyncio.Future[None]]]) -> None:
        if not queue:
            self._waiting.pop(user_id, None)


class Fleet:
    """The hub's view of its providers' load and health, for :meth:`order`."""

    def __init__(self, cooldown: float, queue: WaitQueue | None = None) -> None:
        self.cooldown = cooldown
        self.queue = queue or WaitQueue(30.0, 64)
        #: (provider id, service name) -> requests this hub has in flight there
        self._inflight: dict[tuple[int, str], int] = {}
        self._states: dict[int, ProviderState] = {}
        self._cooling: dict[int, _Cooling] = {}
        #: Which service served each conversation last.
        self.affinity = Affinity()

    # -- what heartbeats say -------------------------------------------------------------

    def heard(self, provider_id: int, state: ProviderState, *, user_id: int) -> None:
        """Provider ``provider_id`` of user ``user_id`` sent a heartbeat saying ``state``."""
        old = self._states.get(provider_id)
        if old is not None and old.down and not state.down:
            # Its engines are back (the agent says so): whatever failed may work again.
            self._cooling.pop(provider_id, None)
        self._states[provider_id] = state
        if more_room(old, state):
            self.queue.wake(user_id)

    def leaving(self, provider_id: int) -> None:
        """The provider's agent said goodbye: no new request until its next heartbeat."""
        self._states[provider_id] = replace(self.state(provider_id), leaving=True)

    def state(self, provider_id: int) -> ProviderState:
        return self._states.get(provider_id) or NO_STATE

    def forget(self, provider_id: int) -> None:
        self._states.pop(provider_id, None)
        self._cooling.pop(provider_id, None)

    # -- requests in flight --------------------------------------------------------------

    def inflight(self, route: Route) -> int:
        return self._inflight.get((route.provider.id, route.service.name), 0)

    @contextmanager
    def busy(self, route: Route) -> Iterator[None]:
        """Count one request in flight to ``route`` for the block."""
        key = self.enter(route)
        try:
            yield
        finally:
            self.leave(key, route.provider.user_id)

    def enter(self, route: Route) -> tuple[int, str]:
        """Count one request in flight to ``route`` until :meth:`leave` with the key returned:
        :meth:`busy` without a generator, for the proxy's path taken by every request."""
        key = (route.provider.id, route.service.name)
        self._inflight[key] = self._inflight.get(key, 0) + 1
        return key

    def leave(self, key: tuple[int, str], user_id: int) -> None:
        left = self._inflight[key] - 1
        if left:
            self._inflight[key] = left
        else:
            del self._inflight[key]
        self.queue.wake(user_id)

    # -- passive health ------------------------------------------------------------------

    def failed(self, provider_id: int, now: float | None = None) -> None:
        """The provider could not be reached or answered 502/503: cool it down."""
        now = time.monotonic() if now is None else now
        known = self._cooling.get(provider_id)
        failures = 1 if known is None else known.failures + 1
        seconds = min(self.cooldown * 2 ** (failures - 1), max(MAX_COOLDOWN, self.cooldown))
        self._cooling[provider_id] = _Cooling(failures, now + seconds)

    def succeeded(self, provider_id: int) -> None:
        self._cooling.pop(provider_id, None)

    def released(self, provider_id: int) -> None:
        """A trial ended with neither success nor failure (a 429): another request may try."""
        known = self._cooling.get(provider_id)
        if known is not None:
            known.trial = False

    def cooling_down(self, provider_id: int, now: float | None = None) -> float | None:
        """Seconds left of the provider's cooldown (0 while it waits for or runs its trial),
        or None when it is healthy."""
        known = self._cooling.get(provider_id)
        if known is None:
            return None
        now = time.monotonic() if now is None else now
        return max(0.0, known.until - now)

    def _usable(self, provider_id: int, now: float) -> bool:
        known = self._cooling.get(provider_id)
        return known is None or (known.until <= now and not known.trial)

    # -- the choice ----------------------------------------------------------------------

    def order(
        self,
        routes: Iterable[Route],
        model: str,
        now: float | None = None,
        prefer: Served | None = None,
    ) -> list[Route]:
        """``routes`` (online candidates, in registry order) that may take a request now,
        best first; see the module's docstring for the order. ``prefer`` is the service
        that served the conversation's previous turn."""
        now = time.monotonic() if now is None else now
        keyed = []
        for index, route in enumerate(routes):
            state = self.state(route.provider.id)
            if state.leaving or not self._usable(route.provider.id, now):
                continue
            again = (route.provider.id, route.service.name) == prefer
            keyed.append(((*self._key(route, state, model, again), index), route))
        keyed.sort(key=lambda item: item[0])
        return [route for _, route in keyed]

    def _key(
        self, route: Route, state: ProviderState, model: str, again: bool
    ) -> tuple[bool, int, bool, bool]:
        load = state.loads.get(route.service.name) or NO_LOAD
        inflight = self.inflight(route)
        limit = load.max_concurrency
        free = (UNBOUNDED if limit is None else limit) - inflight - load.queue
        full = limit is not None and inflight >= limit
        hot = load.loaded is not None and model in load.loaded
        return (full, -free, not again, not hot)

    def trying(self, route: Route) -> None:
        """``route`` is about to be tried: a cooled-down provider's trial begins."""
        known = self._cooling.get(route.provider.id)
        if known is not None:
            known.trial = True

    def full(self, route: Route) -> bool:
        limit = self.state(route.provider.id).loads.get(route.service.name, NO_LOAD)
        return limit.max_concurrency is not None and self.inflight(route) >= limit.max_concurrency

    def retry_after(self, provider_ids: Iterable[int], now: float | None = None) -> int | None:
        """Whole seconds until the first of these providers ends its cooldown, if any cools."""
        left = [c for p in provider_ids if (c := self.cooling_down(p, now)) is not None]
        return max(1, math.ceil(min(left))) if left else None

    # -- candidates, then a choice -------------------------------------------------------

    def choose(
        self,
        registry: Registry,
        user_id: int,
        type_: str,
        model: str,
        conversation: Conversation | None = None,
    ) -> list[Route]:
        """The services to try for a request, best first; or the error that says why none
        can serve: 503 ``model_unavailable`` naming each provider and why, or the registry's
        404 when the user has no such model at all. ``conversation`` is the request's, if it
        is a chat (:class:`~inferclub.hub.affinity.Conversation`)."""
        try:
            online = registry.candidates(user_id, type_, model)
        except OpenAIError as err:
            reasons = (
                self._engines_down(registry, user_id, type_, model) if err.status == 404 else []
            )
            if reasons:
                raise model_unavailable(model, reasons) from None
            raise
        now = time.monotonic()
        if len(online) == 1:
            # One candidate (most users): nothing to sort, no conversation to prefer it by.
            pid = online[0].provider.id
            usable = not self.state(pid).leaving and self._usable(pid, now)
            ordered = online if usable else []
        else:
            key = None if conversation is None else conversation.key()
            ordered = self.order(online, model, now, self.affinity.preferred(key))
        if ordered:
            return ordered
        reasons = list(dict.fromkeys(self._why_not(r, now) for r in online))
        raise model_unavailable(
            model, reasons, self.retry_after((r.provider.id for r in online), now)
        )

    def _why_not(self, route: Route, now: float) -> str:
        name = route.provider.name
        if self.state(route.provider.id).leaving:
            return f"{name}: agent shutting down"
        left = self.cooling_down(route.provider.id, now) or 0.0
        if left > 0:
            return f"{name}: cooling down after failing ({left:.0f} s left)"
        return f"{name}: being tried again after failing"

    def _engines_down(self, registry: Registry, user_id: int, type_: str, model: str) -> list[str]:
        """``provider: engine down (why)`` for each online provider whose down service has
        ``model`` as ``type_``."""
        now = time.time()
        out = []
        for p in registry.providers(user_id):
            if not registry.is_online(p, now):
                continue
            for down in self.state(p.id).down:
                if down.type == type_ and model in down.models:
                    out.append(f"{p.name}: engine down ({down.detail or 'not answering'})")
        return out

    async def choose_or_wait(
        self,
        registry: Registry,
        user_id: int,
        type_: str,
        model: str,
        conversation: Conversation | None = None,
    ) -> list[Route]:
        """:meth:`choose`; when every candidate is at its capacity, wait in the user's queue
        for one to free up. Return without an await after the choice, so the caller counts
        its request in flight before any other request chooses."""

        def ready() -> list[Route] | None:
            routes = self.choose(registry, user_id, type_, model, conversation)
            return None if self.full(routes[0]) else routes

        routes = ready()
        if routes is not None:
            return routes
        return await self.queue.wait(user_id, ready)
