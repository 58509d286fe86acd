"""The agent's live view of its services: health, discovered models, requests in flight."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp

from inferclub.engines import Engine, EngineError, Load, Service
from inferclub.wire import MAX_DETAIL, AdvertisedService

log = logging.getLogger("inferclub.agent.services")


@dataclass
class ServiceState:
    service: Service
    engine: Engine
    up: bool = False
    detail: str = "not checked yet"
    discovered: tuple[str, ...] = ()
    info: Mapping[str, Any] = field(default_factory=dict)
    in_flight: int = 0
    checked_at: float | None = None
    #: What the engine told of its load at the last probe (None: it cannot tell).
    load: Load | None = None
    #: Set (and replaced) each time a request ends, for requests waiting for a slot.
    _freed: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.service.name

    def model_names(self) -> list[str]:
        """Advertised model names: the manifest's (aliases first) or the discovered ones."""
        if self.service.models:
            return [m.name for m in self.service.models]
        return list(self.discovered)

    def serves(self, requested: str) -> bool:
        return any(
            self.engine.model_matches(self.service, n, requested) for n in self.model_names()
        )

    def engine_model(self, requested: str) -> str:
        """The name the engine knows `requested` by (resolves aliases)."""
        for model in self.service.models:
            if self.engine.model_matches(self.service, model.name, requested):
                return model.id
        return requested

    def advertisement(self) -> AdvertisedService:
        s = self.service
        return AdvertisedService(
            s.name, s.type, s.engine, tuple(s.features), tuple(self.model_names())
        )

    def announcement(self) -> AdvertisedService:
        """The service as the heartbeat announces it: its load, or why it is down."""
        ad = self.advertisement()
        load = self.load if self.up else None
        loaded = None
        if load is not None and load.loaded is not None:
            loaded = tuple(n for n in ad.models if self._is_loaded(n, load.loaded))
        return replace(
            ad,
            max_concurrency=self.service.max_concurrency,
            queue=None if load is None else load.queue,
            loaded=loaded,
        )

    def _is_loaded(self, advertised: str, loaded: tuple[str, ...]) -> bool:
        engine_name = self.engine_model(advertised)
        return any(self.engine.model_matches(self.service, engine_name, n) for n in loaded)

    def full(self) -> bool:
        limit = self.service.max_concurrency
        return limit is not None and self.in_flight >= limit

    async def wait_free(self, grace: float) -> bool:
        """Whether a slot is free, waiting at most ``grace`` seconds for one. The hub counts
        a request done once it has the last byte, this agent a moment later (when its handler
        returns): a request the hub sends in between waits for the slot, not a 429."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.full():
            try:
                async with asyncio.timeout_at(deadline):
                    await self._freed.wait()
            except TimeoutError:
                return not self.full()
        return True

    def release(self) -> None:
        """A request to the service ended: wake the requests waiting for a slot."""
        self.in_flight -= 1
        self._freed.set()
        self._freed = asyncio.Event()


class ServiceTable:
    """All services of the manifest, in manifest order."""

    def __init__(self, services: Iterable[Service], engines: Mapping[str, Engine]) -> None:
        self.states = {s.name: ServiceState(s, engines[s.engine]) for s in services}

    def get(self, name: str) -> ServiceState | None:
        return self.states.get(name)

    def find(self, model: str, service_type: str) -> ServiceState | None:
        """The first service of `service_type` that serves `model`, preferring live ones."""
        candidates = [
            st
            for st in self.states.values()
            if st.service.type == service_type and st.serves(model)
        ]
        candidates.sort(key=lambda st: not st.up)
        return candidates[0] if candidates else None

    def advertised(self) -> list[AdvertisedService]:
        """What the heartbeat announces: live services that have at least one model."""
        return [st.advertisement() for st in self.states.values() if st.up and st.model_names()]

    def announced(self) -> list[AdvertisedService]:
        """The heartbeat's ``services``: the live ones, as `advertised`, with their load."""
        return [st.announcement() for st in self.states.values() if st.up and st.model_names()]

    def down(self) -> list[AdvertisedService]:
        """The heartbeat's ``down``: services whose engine is down, with their last known
        models and why, so the hub answers "unavailable" rather than "no such model"."""
        return [
            replace(st.advertisement(), detail=st.detail[:MAX_DETAIL] or "down")
            for st in self.states.values()
            if not st.up and st.checked_at is not None and st.model_names()
        ]

    def in_flight(self) -> dict[str, int]:
        return {name: st.in_flight for name, st in self.states.items()}

    @property
    def total_in_flight(self) -> int:
        return sum(st.in_flight for st in self.states.values())

    async def probe_all(self, session: aiohttp.ClientSession) -> None:
        await asyncio.gather(*(probe(session, st) for st in self.states.values()))


async def engine_load(session: aiohttp.ClientSession, st: ServiceState) -> Load | None:
    """The engine's load, or None when it cannot tell: never a reason to call it down."""
    try:
        return await st.engine.load(session, st.service)
    except (TimeoutError, aiohttp.ClientError, EngineError) as exc:
        log.debug("service %s: no load (%s)", st.name, describe(exc))
        return None


def describe(exc: BaseException, peer: str = "the engine") -> str:
    """A short, secret-free description of an I/O failure talking to ``peer``."""
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        errno = exc.os_error.errno
        reason = os.strerror(errno).lower() if errno else str(exc.os_error)
        return f"cannot connect to {exc.host}:{exc.port} ({reason})"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status}"
    # aiohttp's own texts name its internals ("Response payload is not completed:
    # <TransferEncodingError: 400, ...>"): clients and dashboards get a plain reason.
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"{peer}'s answer was cut off"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return f"{peer} closed the connection"
    if isinstance(exc, aiohttp.ClientError):
        return f"connection to {peer} failed ({type(exc).__name__})"
    return str(exc) or type(exc).__name__


def _failed_probe(st: ServiceState, exc: BaseException, was_up: bool | None) -> tuple[bool, str]:
    """``(up, detail)`` after a failed health check. An engine that was up and is serving
    requests of ours, and only took too long to answer its health check, is busy, not down:
    a one-slot server (faster-whisper-server, llama-server with one slot) answered nothing
    while it transcribed, and the hub then turned clients away from an engine that worked."""
    if isinstance(exc, TimeoutError) and was_up and st.in_flight:
        return True, f"busy: health check timed out with {st.in_flight} requests in flight"
    return False, describe(exc)


async def probe(session: aiohttp.ClientSession, st: ServiceState) -> None:
    """Health-check one service, discover its models, and log when it goes up or down."""
    was_up = st.up if st.checked_at is not None else None
    service, engine = st.service, st.engine
    try:
        health = await engine.health(session, service)
        discovered = st.discovered
        if health.ok and not service.models:
            discovered = tuple(await engine.discover_models(session, service))
        st.up, st.detail, st.info, st.discovered = health.ok, health.detail, health.info, discovered
        st.load = await engine_load(session, st) if health.ok else None
    except (TimeoutError, aiohttp.ClientError, EngineError) as exc:
        st.up, st.detail = _failed_probe(st, exc, was_up)
    except Exception as exc:  # a plugin bug must not stop the agent's other services
        log.exception("engine %r failed while probing service %r", engine.name, service.name)
        st.up, st.detail = False, f"engine error: {type(exc).__name__}"
    st.checked_at = time.time()
    if st.up and not was_up:
        log.info("service %s is up (%d models)", service.name, len(st.model_names()))
    elif not st.up and was_up is not False:
        log.warning("service %s is down: %s", service.name, st.detail)
