"""Heartbeats: announce the live services to the hub and learn the callback token.

One loop probes every service, then beats when a beat is due or as soon as the advertised set
changed. Failures are retried with bounded exponential backoff, one log line each; a 401 means
the API key was rejected, and the agent stops.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from inferclub.agent import __version__
from inferclub.agent.services import ServiceTable, describe

log = logging.getLogger("inferclub.agent.heartbeat")

DEFAULT_INTERVAL = 30.0
#: Services are probed three times per interval, and at least this often, so that a change
#: is announced well before the next regular beat.
MAX_PROBE_INTERVAL = 10.0
PROBES_PER_INTERVAL = 3
MAX_BACKOFF = 60.0


class KeyRejected(Exception):
    """The hub answered 401: the API key is wrong or revoked."""


@dataclass
class CallbackAuth:
    """The latest callback token the hub gave us; requests from the hub must carry it."""

    token: str | None = field(default=None, repr=False)

    def check(self, authorization: str | None) -> str:
        """'ok', 'not_ready' (no heartbeat has succeeded yet) or 'denied'."""
        if self.token is None:
            return "not_ready"
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return "denied"
        return (
            "ok" if hmac.compare_digest(given.strip().encode(), self.token.encode()) else "denied"
        )


@dataclass
class HubInfo:
    provider_id: Any = None
    heartbeat_interval: float | None = None
    online_window: float | None = None


class Heartbeat:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        table: ServiceTable,
        *,
        hub: str,
        key: str,
        name: str,
        callback_url: str,
        auth: CallbackAuth,
        health: Callable[[], Awaitable[dict[str, Any]]],
        interval: float | None = None,
    ) -> None:
        self.session = session
        self.table = table
        self.url = hub.rstrip("/") + "/v1/agent/heartbeat"
        self._key = key
        self.name = name
        self.callback_url = callback_url
        self.auth = auth
        self.health = health
        self.fixed_interval = interval
        self.hub = HubInfo()
        self.wake = asyncio.Event()
        self.beats = 0
        self._failing = False
        self._unreachable: str | None = None

    @property
    def interval(self) -> float:
        return self.fixed_interval or self.hub.heartbeat_interval or DEFAULT_INTERVAL

    def poke(self) -> None:
        """Probe and (if anything changed) beat now, e.g. after a request found a service down."""
        self.wake.set()

    async def run(self) -> None:
        """Beat until cancelled. Raises `KeyRejected` on a 401."""
        last_sent: list[dict[str, Any]] | None = None
        next_beat = 0.0
        backoff = 1.0
        while True:
            await self.table.probe_all(self.session)
            advertised = self.table.advertised()
            now = time.monotonic()
            changed = last_sent is not None and advertised != last_sent
            if now >= next_beat or (changed and not self._failing):
                if changed:
                    log.info("advertised services changed; sending a heartbeat now")
                if await self.beat(advertised, backoff):
                    last_sent = advertised
                    backoff = 1.0
                    next_beat = time.monotonic() + self.interval
                else:
                    next_beat = time.monotonic() + backoff
                    backoff = min(backoff * 2, MAX_BACKOFF, 4 * self.interval)
            probe_every = min(self.interval / PROBES_PER_INTERVAL, MAX_PROBE_INTERVAL)
            delay = max(0.0, min(next_beat - time.monotonic(), probe_every))
            try:
                await asyncio.wait_for(self.wake.wait(), delay)
            except TimeoutError:
                pass
            self.wake.clear()

    async def beat(self, advertised: list[dict[str, Any]], retry_in: float) -> bool:
        payload = {
            "name": self.name,
            "callback_url": self.callback_url,
            "version": __version__,
            "services": advertised,
            "health": await self.health(),
        }
        try:
            async with self.session.post(
                self.url, json=payload, headers={"Authorization": f"Bearer {self._key}"}
            ) as resp:
                if resp.status == 401:
                    raise KeyRejected()
                body = await resp.read()
                if resp.status != 200:
                    return self._failed(f"HTTP {resp.status}: {_error_message(body)}", retry_in)
                data = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError) as exc:
            return self._failed(describe(exc), retry_in)
        except ValueError:
            return self._failed("the hub's answer is not JSON", retry_in)
        token = data.get("callback_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            return self._failed("the hub's answer has no callback_token", retry_in)
        self.auth.token = token
        self.hub = HubInfo(
            provider_id=data.get("provider_id"),
            heartbeat_interval=_positive(data.get("heartbeat_interval")),
            online_window=_positive(data.get("online_window")),
        )
        problem = data.get("callback_error") if data.get("callback_reachable") is False else None
        if problem != self._unreachable:
            if problem:
                log.warning(
                    "the hub cannot reach this agent at %s (%s): requests will fail until it "
                    "can; pass --callback-url with an address the hub can reach",
                    self.callback_url,
                    problem,
                )
            elif self._unreachable:
                log.info("the hub reaches this agent at %s again", self.callback_url)
            self._unreachable = problem
        models = sum(len(s["models"]) for s in advertised)
        if self.beats == 0 or self._failing:
            log.info(
                "heartbeat accepted by the hub (provider %s): %d services, %d models",
                self.hub.provider_id,
                len(advertised),
                models,
            )
            window = self.hub.online_window
            if window is not None and self.interval >= window:
                log.warning(
                    "heartbeat interval %.0fs is not below the hub's online window %.0fs; "
                    "the hub will see this agent as offline between beats",
                    self.interval,
                    window,
                )
        self.beats += 1
        self._failing = False
        return True

    def _failed(self, reason: str, retry_in: float) -> bool:
        log.warning("heartbeat to %s failed: %s; retrying in %.0fs", self.url, reason, retry_in)
        self._failing = True
        return False


def _positive(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def _error_message(body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:200] or "(empty body)"
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return str(data["error"].get("message", ""))[:200]
    return text[:200]
