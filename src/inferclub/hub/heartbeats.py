"""Heartbeats, whichever way they come: ``POST /v1/agent/heartbeat`` or a message on an
agent's tunnel (:mod:`inferclub.hub.tunnels`). One path for both, so validation, pacing,
name ownership and the provider limit are the same rules.

A provider on a tunnel is recorded with ``transport = "tunnel"`` and, instead of the agent's
callback URL, the internal URL of the hub process holding its tunnel
(:mod:`inferclub.hub.internal`): no agent is called there, so neither the callback policy nor
a reachability probe applies.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from inferclub import wire
from inferclub.hub.callback_policy import CallbackPolicy, CallbackRefused, check_callback_url
from inferclub.hub.choose import ProviderState
from inferclub.hub.liveness import name_taken
from inferclub.hub.reachability import reply_fields
from inferclub.hub.store import KeyOwner, ProviderRecord
from inferclub.hub.tunnels import TUNNEL_CALLBACK_URL
from inferclub.openai_errors import OpenAIError

if TYPE_CHECKING:
    from inferclub.hub.app import Hub

log = logging.getLogger("inferclub.agent")

CALLBACK = "callback"
TUNNEL = "tunnel"


@dataclass(frozen=True)
class Accepted:
    """A heartbeat the hub took: its reply (the JSON both transports send back) and the
    provider it is about."""

    reply: dict[str, Any]
    provider_id: int
    name: str
    leaving: bool = False


def holder_url(hub: Hub) -> str:
    """The callback URL this process records for the providers whose tunnel it holds."""
    return hub.internal_url + "/v1" if hub.internal_url else TUNNEL_CALLBACK_URL


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


async def accept(
    hub: Hub, owner: KeyOwner, data: dict[str, Any], transport: str = CALLBACK, size: int = 0
) -> Accepted:
    """Apply one heartbeat sent with ``owner``'s key (a ``size``-byte body); raises
    :class:`OpenAIError` to refuse it."""
    user_id = owner.user_id
    # A tenant's many heartbeats take turns with other users' requests (hub/fairness.py).
    await hub.turns.turn(user_id, size)
    name = data.get("name")
    # A goodbye is paced apart from the beats it follows, and not remembered (see _goodbye).
    leaving = data.get("leaving") is True
    known = None
    if isinstance(name, str):
        # Before the rest is validated: a beat over the rate costs its JSON decoding only.
        (hub.goodbye_pacer if leaving else hub.heartbeat_pacer).check(user_id, name.strip())
        if not leaving:
            known = hub.liveness.known_services(user_id, name.strip())
    hb = parse_heartbeat(data, known)
    if transport == TUNNEL:
        hb = dataclasses.replace(hb, callback_url=holder_url(hub))
    if hb.leaving:
        return _goodbye(hub, owner, hb)
    hub.liveness.remember_services(user_id, hb.name, data.get("services", []), hb.services)
    found = hub.registry.find(user_id, hb.name)
    if found is None:
        _check_provider_limit(hub, user_id)
    # Resolving costs a DNS round trip: only a new or changed URL is checked here. The
    # relay checks every address again when it connects, so a stale check is harmless.
    if transport == CALLBACK and (found is None or found.callback_url != hb.callback_url):
        await check_callback(hb.callback_url, hub.callback_policy)
    record, before = await hub.liveness.beat(user_id, hb, time.time(), owner.key_id, transport)
    hub.fleet.heard(record.id, ProviderState.of(hb), user_id=user_id)
    hub.heartbeat_pacer.accepted(user_id, hb.name)
    hub.metrics.heartbeats.inc()
    if _news(hub, before, record, transport):
        log.info(
            "provider %r of %s %s: %d services, %d models",
            record.name,
            owner.login,
            "through its tunnel" if transport == TUNNEL else f"online at {record.callback_url}",
            len(record.services),
            sum(len(s.models) for s in record.services),
        )
    problem = None if transport == TUNNEL else await _reachability(hub, owner, record)
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
    return Accepted(reply.to_json(), record.id, record.name)


def _news(hub: Hub, before: ProviderRecord | None, now: ProviderRecord, transport: str) -> bool:
    """Whether a beat is worth a log line: the provider came online or changed services.
    A tunnel's handler says when its provider comes online (with the round trip)."""
    if before is not None and before.services != now.services:
        return True
    came = before is None or not hub.registry.is_online(before)
    return came and transport == CALLBACK


async def _reachability(hub: Hub, owner: KeyOwner, record: ProviderRecord) -> str | None:
    problem, probed = await hub.check_callback(owner.user_id, record.id, record.callback_url)
    if problem is not None and probed:
        log.warning(
            "provider %r of %s: the hub cannot reach %s (%s)",
            record.name,
            owner.login,
            record.callback_url,
            problem,
        )
    return problem


def _goodbye(hub: Hub, owner: KeyOwner, hb: wire.Heartbeat) -> Accepted:
    """The agent is shutting down: no new request goes to it from now on. Not stored (it
    changes nothing in the store): it only marks the known provider as leaving, until its
    next ordinary heartbeat. Paced apart from heartbeats (a goodbye follows a beat at once):
    a flood of goodbyes gets the 429s a flood of beats gets, not a log line each."""
    known = hub.registry.find(owner.user_id, hb.name)
    if known is None:
        raise OpenAIError(
            404,
            f"No provider {hb.name!r} is registered.",
            "invalid_request_error",
            "provider_not_found",
            "name",
        )
    if known.key_id is not None and known.key_id != owner.key_id:
        raise name_taken(hb.name)  # only the key that owns the name may say goodbye
    if known.callback_url != hb.callback_url:
        # Two agents started with one name (and key): the one leaving is not the one the
        # hub routes to now, which keeps serving.
        log.warning(
            "provider %r of %s: ignored a goodbye from %s, its agent heartbeats from %s"
            " (two agents with this name? give one another --name)",
            known.name,
            owner.login,
            hb.callback_url,
            known.callback_url,
        )
    else:
        hub.fleet.leaving(known.id)
        log.info("provider %r of %s is shutting down", known.name, owner.login)
    hub.goodbye_pacer.accepted(owner.user_id, hb.name)
    reply = wire.HeartbeatReply(
        provider_id=known.id,
        hub_key=hub.signer.public_key,
        heartbeat_interval=hub.settings.heartbeat_interval,
        online_window=hub.settings.online_window,
    )
    return Accepted(reply.to_json(), known.id, known.name, leaving=True)


def _check_provider_limit(hub: Hub, user_id: int) -> None:
    """A 429 when a new provider would take the user past ``max_providers_per_user``."""
    count = len(hub.registry.providers(user_id))
    limit = hub.settings.max_providers_per_user
    if limit > 0 and count >= limit:
        raise OpenAIError(
            429,
            f"You have {count} providers, the most this hub allows one user; delete one "
            "in the dashboard before registering another.",
            "rate_limit_error",
            "provider_limit_reached",
            "name",
        )
