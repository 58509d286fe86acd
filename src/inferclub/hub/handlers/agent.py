"""The agent protocol: heartbeats (the payloads are ``inferclub.wire``'s)."""

from __future__ import annotations

import logging
import time

from inferclub import wire
from inferclub.hub.handlers.base import ApiHandler
from inferclub.hub.store import ServiceInfo
from inferclub.openai_errors import OpenAIError

log = logging.getLogger("inferclub.agent")


def parse_heartbeat(data: object) -> wire.Heartbeat:
    """The heartbeat in ``data``, or a 400 naming the bad field in ``param``."""
    try:
        return wire.Heartbeat.parse(data)
    except wire.PayloadError as exc:
        raise OpenAIError(
            400,
            f"Invalid heartbeat: {exc}",
            "invalid_request_error",
            "invalid_heartbeat",
            exc.field,
        ) from None


class HeartbeatHandler(ApiHandler):
    body_limit_setting = "max_heartbeat_body"

    async def post(self) -> None:
        hb = parse_heartbeat(self.json_body())
        hub = self.hub
        hub.heartbeat_pacer.check(self.owner.user_id, hb.name)
        mine = hub.registry.providers(self.owner.user_id)
        before = next((p for p in mine if p.name == hb.name), None)
        limit = hub.settings.max_providers_per_user
        if before is None and limit > 0 and len(mine) >= limit:
            raise OpenAIError(
                429,
                f"You have {len(mine)} providers, the most this hub allows one user; delete one "
                "in the dashboard before registering another.",
                "rate_limit_error",
                "provider_limit_reached",
                "name",
            )
        record = await hub.store.save_heartbeat(
            self.owner.user_id,
            hb.name,
            hb.callback_url,
            hb.version,
            hb.health,
            [ServiceInfo(s.name, s.type, s.engine, s.features, s.models) for s in hb.services],
            time.time(),
        )
        hub.registry.update(record)
        hub.heartbeat_pacer.accepted(self.owner.user_id, hb.name)
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
        problem = await hub.check_callback(record.id, record.callback_url)
        if problem is not None:
            log.warning(
                "provider %r of %s: the hub cannot reach %s (%s)",
                record.name,
                self.owner.login,
                record.callback_url,
                problem,
            )
        reply = wire.HeartbeatReply(
            provider_id=record.id,
            callback_token=hub.callback_token(record.id),
            heartbeat_interval=hub.settings.heartbeat_interval,
            online_window=hub.settings.online_window,
            callback_reachable=problem is None,
            callback_error=problem,
        )
        self.write_json(reply.to_json())


routes = [(wire.HEARTBEAT_PATH, HeartbeatHandler)]
