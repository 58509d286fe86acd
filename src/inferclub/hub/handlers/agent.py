"""The agent protocol: heartbeats (the payloads are ``inferclub.wire``'s) and the hub's public
signing key."""

from __future__ import annotations

import logging
import time

from inferclub import wire
from inferclub.hub import keys
from inferclub.hub.callback_policy import CallbackPolicy, CallbackRefused, check_callback_url
from inferclub.hub.choose import ProviderState
from inferclub.hub.handlers.base import ApiHandler
from inferclub.hub.liveness import name_taken
from inferclub.hub.reachability import reply_fields
from inferclub.openai_errors import OpenAIError

log = logging.getLogger("inferclub.agent")


def parse_heartbeat(data: object, known: wire.KnownServices | None = None) -> wire.Heartbeat:
    """The heartbeat in ``data``, or a 400 naming the bad field in ``param``."""
    try:
        return wire.Heartbeat.parse(data, known)
    except wire.PayloadError as exc:
        raise OpenAIError(
            400,
            f"Invalid heartbeat: {exc}",
            "invalid_request_error",
            "invalid_heartbeat",
            exc.field,
        ) from None


async def check_callback(url: str, policy: CallbackPolicy) -> None:
    """A 400 with ``param: callback_url`` naming the resolved address and the setting when
    the hub may not call ``url``."""
    try:
        await check_callback_url(url, policy)
    except CallbackRefused as exc:
        raise OpenAIError(400, exc.message, "invalid_request_error", exc.code, exc.param) from None


class HeartbeatHandler(ApiHandler):
    body_limit_setting = "max_heartbeat_body"
    required_scope = keys.AGENT

    async def post(self) -> None:
        hub = self.hub
        user_id = self.owner.user_id
        # A tenant's many heartbeats take turns with other users' requests (hub/fairness.py).
        await hub.turns.turn(user_id)
        data = self.json_body()
        name = data.get("name")
        # A goodbye is neither paced nor remembered (see _goodbye).
        leaving = data.get("leaving") is True
        known = None
        if isinstance(name, str) and not leaving:
            # Before the rest is validated: a beat over the rate costs its JSON decoding only.
            hub.heartbeat_pacer.check(user_id, name.strip())
            known = hub.liveness.known_services(user_id, name.strip())
        hb = parse_heartbeat(data, known)
        if hb.leaving:
            self._goodbye(hb)
            return
        hub.liveness.remember_services(user_id, hb.name, data.get("services", []), hb.services)
        found = hub.registry.find(user_id, hb.name)
        if found is None:
            self._check_provider_limit()
        # Resolving costs a DNS round trip: only a new or changed URL is checked here. The
        # relay checks every address again when it connects, so a stale check is harmless.
        if found is None or found.callback_url != hb.callback_url:
            await check_callback(hb.callback_url, hub.callback_policy)
        record, before = await hub.liveness.beat(user_id, hb, time.time(), self.owner.key_id)
        hub.fleet.heard(record.id, ProviderState.of(hb), user_id=user_id)
        hub.heartbeat_pacer.accepted(user_id, hb.name)
        hub.metrics.heartbeats.inc()
        if (
            before is None
            or not hub.registry.is_online(before)
            or before.services != record.services
        ):
            log.info(
                "provider %r of %s online at %s: %d services, %d models",
                record.name,
                self.owner.login,
                record.callback_url,
                len(record.services),
                sum(len(s.models) for s in record.services),
            )
        problem, probed = await hub.check_callback(user_id, record.id, record.callback_url)
        if problem is not None and probed:
            log.warning(
                "provider %r of %s: the hub cannot reach %s (%s)",
                record.name,
                self.owner.login,
                record.callback_url,
                problem,
            )
        reachable, error = reply_fields(problem)
        reply = wire.HeartbeatReply(
            # A provisional (negative) id is what this hub signs with until the store
            # assigns the real one; the next beat that reaches the store replaces it.
            provider_id=record.id,
            hub_key=hub.signer.public_key,
            heartbeat_interval=hub.settings.heartbeat_interval,
            online_window=hub.settings.online_window,
            callback_reachable=reachable,
            callback_error=error,
        )
        self.write_json(reply.to_json())

    def _goodbye(self, hb: wire.Heartbeat) -> None:
        """The agent is shutting down: no new request goes to it from now on. Neither paced
        nor stored (a goodbye follows a beat at once, and changes nothing in the store): it
        only marks the known provider as leaving, until its next ordinary heartbeat."""
        hub = self.hub
        known = hub.registry.find(self.owner.user_id, hb.name)
        if known is None:
            raise OpenAIError(
                404,
                f"No provider {hb.name!r} is registered.",
                "invalid_request_error",
                "provider_not_found",
                "name",
            )
        if known.key_id is not None and known.key_id != self.owner.key_id:
            raise name_taken(hb.name)  # only the key that owns the name may say goodbye
        hub.fleet.leaving(known.id)
        log.info("provider %r of %s is shutting down", known.name, self.owner.login)
        reply = wire.HeartbeatReply(
            provider_id=known.id,
            hub_key=hub.signer.public_key,
            heartbeat_interval=hub.settings.heartbeat_interval,
            online_window=hub.settings.online_window,
        )
        self.write_json(reply.to_json())

    def _check_provider_limit(self) -> None:
        """A 429 when a new provider would take the user past ``max_providers_per_user``."""
        count = len(self.hub.registry.providers(self.owner.user_id))
        limit = self.hub.settings.max_providers_per_user
        if limit > 0 and count >= limit:
            raise OpenAIError(
                429,
                f"You have {count} providers, the most this hub allows one user; delete one "
                "in the dashboard before registering another.",
                "rate_limit_error",
                "provider_limit_reached",
                "name",
            )


class HubKeyHandler(ApiHandler):
    """``GET /v1/agent/hub-key``: the key agents check the hub's requests with.

    Needs no API key: it is public, and an agent's operator should be able to read it (to
    set it explicitly, or compare it with the pinned one) before holding a key.
    """

    SUPPORTED_METHODS = ("GET",)

    async def prepare(self) -> None:
        # No authentication; a body sent anyway is dropped as it arrives (limit 0).
        self._chunks, self._size, self._too_large, self._limit = [], 0, False, 0

    def get(self) -> None:
        key = self.hub.signer.public_key
        self.write_json({"object": "hub_key", "algorithm": "ed25519", "key": key})


routes = [(wire.HEARTBEAT_PATH, HeartbeatHandler), (wire.HUB_KEY_PATH, HubKeyHandler)]
