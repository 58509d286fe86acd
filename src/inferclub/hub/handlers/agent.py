"""The agent protocol: heartbeats."""

from __future__ import annotations

import logging
import time

from inferclub.hub.handlers.base import ApiHandler
from inferclub.hub.protocol import parse_heartbeat

log = logging.getLogger("inferclub.agent")


class HeartbeatHandler(ApiHandler):
    async def post(self) -> None:
        hb = parse_heartbeat(self.json_body())
        hub = self.hub
        before = next(
            (p for p in hub.registry.providers(self.owner.user_id) if p.name == hb.name), None
        )
        record = await hub.store.save_heartbeat(
            self.owner.user_id,
            hb.name,
            hb.callback_url,
            hb.version,
            hb.health,
            hb.services,
            time.time(),
        )
        hub.registry.update(record)
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
        answer = {
            "provider_id": record.id,
            "heartbeat_interval": hub.settings.heartbeat_interval,
            "online_window": hub.settings.online_window,
            "callback_token": hub.callback_token(record.id),
            "callback_reachable": True,
        }
        problem = await hub.check_callback(record.id, record.callback_url)
        if problem is not None:
            log.warning(
                "provider %r of %s: the hub cannot reach %s (%s)",
                record.name,
                self.owner.login,
                record.callback_url,
                problem,
            )
            answer.update(callback_reachable=False, callback_error=problem)
        self.write_json(answer)


routes = [(r"/v1/agent/heartbeat", HeartbeatHandler)]
