"""The agent protocol: heartbeats (the payloads are ``inferclub.wire``'s) and the hub's public
signing key."""

from __future__ import annotations

from inferclub import wire
from inferclub.hub import heartbeats, keys
from inferclub.hub.handlers.base import ApiHandler


class HeartbeatHandler(ApiHandler):
    body_limit_setting = "max_heartbeat_body"
    required_scope = keys.AGENT

    async def post(self) -> None:
        payload = self.json_body()
        accepted = await heartbeats.accept(self.hub, self.owner, payload, size=self._size)
        self.write_json(accepted.reply)


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
