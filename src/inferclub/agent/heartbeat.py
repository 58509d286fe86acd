"""Heartbeats: announce the live services to the hub; learn its signing key and our provider id.

One loop probes every service, then beats when a beat is due or as soon as the advertised set
changed. Failures are retried with bounded exponential backoff, one log line each; a 401 (the
API key is wrong or revoked) or a 403 ``insufficient_scope`` (an ``inference`` key) means the
key was rejected for good, and the agent stops. So does a hub key other than the one pinned
(:class:`HubAuth`): requests signed with it are never served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from inferclub import __version__, signing, wire
from inferclub.agent.services import ServiceTable, describe
from inferclub.openai_errors import normalise_error_body

log = logging.getLogger("inferclub.agent.heartbeat")

DEFAULT_INTERVAL = 30.0
#: Services are probed three times per interval, and at least this often, so that a change
#: is announced well before the next regular beat.
MAX_PROBE_INTERVAL = 10.0
PROBES_PER_INTERVAL = 3
MAX_BACKOFF = 60.0
#: Seconds a stopping agent gives the hub to take its goodbye.
GOODBYE_TIMEOUT = 2.0


#: Sends one heartbeat message (``heartbeat`` or ``goodbye``) and returns the hub's reply,
#: ``(HTTP status, JSON body)``: a POST, or a message on the agent's tunnel.
Exchange = Callable[[str, dict[str, Any]], Awaitable[tuple[int, bytes]]]


def _described(services: list[wire.AdvertisedService]) -> list[wire.AdvertisedService]:
    return [s.description() for s in services]


#: The hub's answers to a heartbeat that no retry can change, by status: any 401 (the key is
#: wrong or revoked), and these error codes. The user must change the key or the name.
FINAL_CODES = {403: {"insufficient_scope"}, 409: {"provider_name_taken"}}


def is_final(status: int, code: object) -> bool:
    return status == 401 or code in FINAL_CODES.get(status, ())


class TunnelDown(aiohttp.ClientConnectionError):
    """A heartbeat found the tunnel (``run --tunnel``) not connected."""


class Refused(Exception):
    """The hub refused the heartbeat for good (:func:`is_final`): a wrong or revoked key
    (401), a key whose scope cannot heartbeat (403 ``insufficient_scope``), or a provider name
    that another active key of the user registered (409 ``provider_name_taken``)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class HubAuth:
    """What the hub's requests are checked against (docs/signing.md): the hub's key, pinned in
    ``known_hubs`` on first sight or set explicitly, and this agent's provider id. Both come
    with a heartbeat reply; until one was accepted, nothing can be checked."""

    known_hubs: signing.KnownHubs
    #: The hub key set in the configuration (``--hub-key``): the file is then left alone.
    explicit_key: str | None = None
    verifier: signing.RequestVerifier | None = None
    provider_id: str | None = None

    @property
    def ready(self) -> bool:
        return self.verifier is not None and self.provider_id is not None

    def accept(self, hub_url: str, reply: wire.HeartbeatReply) -> None:
        """Trust ``reply``'s key if it is the pinned one (pinning it on first sight) and take
        its provider id. Raises :class:`~inferclub.signing.SigningError` (``HubKeyChanged``
        for another key), naming the file and both keys."""
        try:
            key = self.known_hubs.pin_or_check(hub_url, reply.hub_key, self.explicit_key)
        except OSError as exc:
            self.verifier = None  # nothing is served from here on, not even while draining
            raise signing.SigningError(
                f"cannot record the hub's key in {self.known_hubs.path} ({exc}); pass "
                "--known-hubs PATH or --hub-key KEY"
            ) from None
        except signing.SigningError:
            self.verifier = None
            raise
        if self.verifier is None or self.verifier.hub_key != key:
            # Kept across beats: its replay cache must outlive a heartbeat.
            self.verifier = signing.RequestVerifier(key)
        self.provider_id = str(reply.provider_id)

    def check_headers(self, headers: Mapping[str, str]) -> None:
        """Signature steps that need no body; raises ``SignatureRejected``."""
        assert self.verifier is not None, "not ready"
        self.verifier.check_headers(headers)

    def verify(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> None:
        """The whole check, once the body is in; raises ``SignatureRejected``."""
        assert self.verifier is not None and self.provider_id is not None, "not ready"
        self.verifier.verify(method, target, headers, body, self.provider_id)


def hub_auth(known_hubs: Path | None, hub_key: str | None) -> HubAuth:
    """``known_hubs`` defaults to the user's state directory (``default_known_hubs_path``)."""
    path = known_hubs or signing.default_known_hubs_path()
    return HubAuth(signing.KnownHubs(path), hub_key)


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
        auth: HubAuth,
        health: Callable[[], Awaitable[dict[str, Any]]],
        interval: float | None = None,
        exchange: Exchange | None = None,
    ) -> None:
        self.session = session
        #: How a beat reaches the hub: a POST unless the agent runs a tunnel.
        self.exchange = exchange or self._post
        self.table = table
        self.hub_url = hub
        self.url = hub.rstrip("/") + wire.HEARTBEAT_PATH
        #: Where heartbeats go, as the log names it: over a tunnel, not to the HTTP endpoint.
        self.where = self.url if exchange is None else f"the tunnel to {hub.rstrip('/')}"
        self._key = key
        self.name = name
        self.callback_url = callback_url
        self.auth = auth
        self.health = health
        self.fixed_interval = interval
        #: The hub's latest reply; None until a heartbeat was accepted.
        self.hub: wire.HeartbeatReply | None = None
        self.wake = asyncio.Event()
        self.beats = 0
        self._failing = False
        self._unreachable: str | None = None
        #: Beat at the next round whatever the schedule (a tunnel just connected).
        self._due = False

    @property
    def interval(self) -> float:
        hub_interval = self.hub.heartbeat_interval if self.hub else None
        return self.fixed_interval or hub_interval or DEFAULT_INTERVAL

    def poke(self) -> None:
        """Probe and (if anything changed) beat now, e.g. after a request found a service down."""
        self.wake.set()

    def beat_now(self) -> None:
        """Beat at once: a new tunnel carries no provider until its first beat."""
        self._due = True
        self.wake.set()

    async def run(self) -> None:
        """Beat until cancelled. Raises :class:`Refused` on a final refusal (:func:`is_final`), and
        :class:`~inferclub.signing.SigningError` when the hub's key is not the trusted one."""
        last_sent: list[wire.AdvertisedService] | None = None
        next_beat = 0.0
        backoff = 1.0
        while True:
            await self.table.probe_all(self.session)
            advertised = self.table.announced()
            now = time.monotonic()
            changed = last_sent is not None and _described(advertised) != _described(last_sent)
            due, self._due = self._due, False
            if now >= next_beat or due or (changed and not self._failing):
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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), delay)
            self.wake.clear()

    async def beat(self, advertised: list[wire.AdvertisedService], retry_in: float) -> bool:
        """Send one heartbeat; True when the hub accepted it."""
        payload = wire.Heartbeat(
            self.name,
            self.callback_url,
            __version__,
            tuple(advertised),
            await self.health(),
            down=tuple(self.table.down()),
        )
        try:
            status, body = await self.exchange("heartbeat", payload.to_json())
        except TunnelDown:
            # The tunnel's own lines say why (and on every start, before it connects, there is
            # nothing to say); it beats as soon as it is back.
            log.debug("heartbeat waits for the tunnel to %s", self.hub_url)
            return False
        except (TimeoutError, aiohttp.ClientError) as exc:
            return self._failed(describe(exc, "the hub"), retry_in)
        if status != 200:
            error = normalise_error_body(status, body)["error"]
            if is_final(status, error["code"]):
                raise Refused(status, str(error["code"]), str(error["message"])[:200])
            return self._failed(f"HTTP {status}: {error['message'][:200]}", retry_in)
        try:
            data = json.loads(body)
        except ValueError:
            return self._failed("the hub's answer is not JSON", retry_in)
        try:
            reply = wire.HeartbeatReply.parse(data)
        except wire.PayloadError as exc:
            return self._failed(f"the hub's answer is unusable: {exc}", retry_in)
        self.auth.accept(self.hub_url, reply)
        self.hub = reply
        self._accepted(reply, advertised)
        return True

    async def goodbye(self, timeout: float = GOODBYE_TIMEOUT) -> bool:
        """Tell the hub this agent is shutting down (a heartbeat with ``leaving: true``), so
        it routes no new request here while the ones in flight finish. True when the hub
        took it; a hub that cannot be reached in ``timeout`` finds out from failed requests."""
        if self.hub is None:
            return False  # never registered: nothing routes here
        payload = wire.Heartbeat(
            self.name, self.callback_url, __version__, tuple(self.table.announced()), leaving=True
        )
        try:
            async with asyncio.timeout(timeout):
                status, _ = await self.exchange("goodbye", payload.to_json())
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning(
                "could not tell the hub this agent is leaving: %s", describe(exc, "the hub")
            )
            return False
        if status == 200:
            log.info("told the hub this agent is leaving")
        else:
            log.warning("the hub refused this agent's goodbye (HTTP %d)", status)
        return status == 200

    async def _post(self, kind: str, payload: dict[str, Any]) -> tuple[int, bytes]:
        """A heartbeat (or goodbye: its payload says ``leaving``) over HTTP."""
        async with self.session.post(
            self.url, json=payload, headers={wire.AUTH_HEADER: wire.bearer(self._key)}
        ) as resp:
            return resp.status, await resp.read()

    def _accepted(
        self, reply: wire.HeartbeatReply, advertised: list[wire.AdvertisedService]
    ) -> None:
        """Log what changed: reachability, and recovery (or the first beat)."""
        # None: the hub did not check this time (it will later); not a problem to report.
        problem = reply.callback_error if reply.callback_reachable is False else None
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
        if self.beats == 0 or self._failing:
            log.info(
                "heartbeat accepted by the hub (provider %s): %d services, %d models",
                reply.provider_id,
                len(advertised),
                sum(len(s.models) for s in advertised),
            )
            window = reply.online_window
            if window is not None and self.interval >= window:
                log.warning(
                    "heartbeat interval %.0fs is not below the hub's online window %.0fs; "
                    "the hub will see this agent as offline between beats",
                    self.interval,
                    window,
                )
        self.beats += 1
        self._failing = False

    def _failed(self, reason: str, retry_in: float) -> bool:
        log.warning("heartbeat to %s failed: %s; retrying in %.0fs", self.where, reason, retry_in)
        self._failing = True
        return False
