"""``GET /v1/agent/tunnel``: an agent that cannot be reached dials in (docs/protocol.md).

The key is checked before the upgrade, as for any API request (401, or 403 for an
``inference`` key, OpenAI-shaped). Heartbeats then come as text messages and take the very
path of ``POST /v1/agent/heartbeat`` (:func:`inferclub.hub.heartbeats.accept`), with the key
checked again each time (a revoked key ends the tunnel). The first accepted beat binds the
tunnel to its provider; a beat naming another provider closes it.

Pings go every ``tunnel_ping_interval``; a tunnel without a pong for two intervals is closed.
A tunnel that closes takes its provider out of routing at once, like a goodbye, and fails
the requests on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from typing import Any

import tornado.websocket

from inferclub import tunnel, wire
from inferclub.hub import heartbeats, jsonbody, keys
from inferclub.hub.handlers.base import ApiHandler
from inferclub.hub.tunnels import Tunnel, TunnelBroken
from inferclub.openai_errors import OpenAIError, invalid_key
from inferclub.tunnel import ProtocolError

log = logging.getLogger("inferclub.tunnel")

_PING = struct.Struct("!d")
#: Heartbeats one tunnel may have waiting for their reply. The agent sends one at a time
#: (one more after a reply timed out); the rest of the room is for a goodbye.
_MAX_TEXTS_PENDING = 4
_TEXT_FLOOD = "protocol error: heartbeats sent faster than the hub answers them"
#: Seconds an agent refused for a full hub is asked to wait (its backoff may be longer).
_FULL_RETRY_AFTER = 30
#: The WebSocket versions Tornado accepts (13 is RFC 6455's).
_WS_VERSIONS = ("7", "8", "13")


class TunnelHandler(tornado.websocket.WebSocketHandler, ApiHandler):
    body_limit_setting = "max_heartbeat_body"
    required_scope = keys.AGENT

    tunnel: Tunnel
    provider_id: int | None = None
    _pinger: asyncio.Task[None] | None = None
    _last_pong = 0.0
    _opened = 0.0
    _closing_reason = ""
    _texts_pending = 0
    _announced = False

    @property
    def max_message_size(self) -> int:
        return max(self.hub.settings.max_heartbeat_body, tunnel.MAX_FRAME)

    def check_origin(self, origin: str) -> bool:
        return False  # agents send no Origin; a browser page may never open a tunnel

    async def get(self, *args: Any, **kwargs: Any) -> None:
        # prepare() (ApiHandler's) authenticated the key and its scope before the upgrade.
        if self.request.headers.get("Origin"):
            raise OpenAIError(403, "Tunnels are for agents, not browsers.", "permission_error")
        tunnels = self.hub.relay.tunnels
        self._admit()
        tunnels.closers.add(self._refuse)
        try:
            self._check_handshake()  # after the caps: a refusal there needs no handshake
            await super().get(*args, **kwargs)  # returns once the tunnel closed
        finally:
            tunnels.closers.discard(self._refuse)
            tunnels.closed(self.owner.user_id)

    def _check_handshake(self) -> None:
        """Refuse what Tornado would refuse with a plain-text body: every API error is
        OpenAI-shaped, and a user who opens the URL with curl learns what it is."""
        headers = self.request.headers
        connection = {t.strip().lower() for t in headers.get("Connection", "").split(",")}
        if (
            headers.get("Upgrade", "").lower() != "websocket"
            or "upgrade" not in connection
            or not headers.get("Sec-WebSocket-Key")
        ):
            raise OpenAIError(
                400,
                "This endpoint is a WebSocket (RFC 6455) for `inference-club-agent run "
                "--tunnel`: send `Connection: Upgrade`, `Upgrade: websocket` and "
                "`Sec-WebSocket-Key`.",
                "invalid_request_error",
                "websocket_upgrade_required",
            )
        if headers.get("Sec-WebSocket-Version") not in _WS_VERSIONS:
            raise OpenAIError(
                426,
                "This WebSocket speaks version 13 (RFC 6455) only.",
                "invalid_request_error",
                "websocket_upgrade_required",
                headers={"Sec-WebSocket-Version": "13"},
            )

    def _admit(self) -> None:
        """Count this tunnel in, or refuse the upgrade: 503 when this process holds as many
        tunnels as it may, 429 when the user does (over every process sharing the store)."""
        tunnels, settings = self.hub.relay.tunnels, self.hub.settings
        total = settings.tunnel_max_total
        if total > 0 and tunnels.open_count >= total:
            raise OpenAIError(
                503,
                f"This hub holds {total} tunnels, the most it allows; retry later.",
                "server_error",
                "tunnel_capacity_reached",
                headers={"Retry-After": str(_FULL_RETRY_AFTER)},
            )
        limit, user_id = settings.tunnel_max_per_user, self.owner.user_id
        if not tunnels.admit(user_id, limit, self._held_elsewhere() if limit > 0 else 0):
            raise OpenAIError(
                429,
                f"You have {limit} tunnels open, the most this hub allows one user; close "
                "one (stop its agent) before opening another.",
                "rate_limit_error",
                "tunnel_limit_reached",
            )

    def _held_elsewhere(self) -> int:
        """The user's providers online through a tunnel another hub process holds: the
        registry, which every process shares, records the holder's internal URL as theirs.
        Tunnels that never named their provider elsewhere are not seen (docs/operations.md)."""
        hub, mine = self.hub, heartbeats.holder_url(self.hub)
        return sum(
            1
            for p in hub.registry.providers(self.owner.user_id)
            if p.transport == heartbeats.TUNNEL
            and p.callback_url != mine
            and hub.registry.is_online(p)
            and not hub.fleet.state(p.id).leaving
        )

    def open(self, *args: str, **kwargs: str) -> None:
        # Frames are small and each is sent at once: with Nagle's algorithm on, the END after
        # an OPEN waited for the agent's delayed ACK (40 ms per request).
        self.set_nodelay(True)
        limit = min(self.hub.settings.tunnel_max_streams, tunnel.MAX_STREAMS)
        self.tunnel = Tunnel(self._send, limit, hang_up=self._refuse)
        self._last_pong = self._opened = time.monotonic()
        self._pinger = asyncio.ensure_future(self._ping_loop())
        self._token = self.request.headers.get(wire.AUTH_HEADER, "").partition(" ")[2].strip()
        log.info("tunnel opened by %s from %s", self.owner.login, self.request.remote_ip)

    async def _send(self, message: bytes) -> None:
        try:
            await self.write_message(message, binary=True)
        except tornado.websocket.WebSocketClosedError:
            raise TunnelBroken("the tunnel closed") from None

    def on_message(self, message: str | bytes) -> None:
        if self._closing_reason:
            # Closed by the hub: a heartbeat the agent sent before it knew (held up by a dead
            # link, say) must not take its provider back from the tunnel that replaced this one.
            return
        if isinstance(message, str):
            if self._texts_pending >= _MAX_TEXTS_PENDING:
                # Replies to a flood nobody reads would pile up in the hub's memory.
                self._refuse(tunnel.CLOSE_PROTOCOL, _TEXT_FLOOD)
                return
            self._texts_pending += 1
            asyncio.ensure_future(self._text(message))
            return
        try:
            self.tunnel.on_frame(tunnel.decode(message))
        except ProtocolError as exc:
            self._refuse(tunnel.CLOSE_PROTOCOL, f"protocol error: {exc}")

    async def _text(self, message: str) -> None:
        try:
            await self._answer_text(message)
        finally:
            self._texts_pending -= 1

    async def _answer_text(self, message: str) -> None:
        raw = message.encode()
        try:
            data = jsonbody.loads(raw)
        except jsonbody.JSONBodyError as exc:
            self._refuse(tunnel.CLOSE_PROTOCOL, f"protocol error: text message is not JSON: {exc}")
            return
        kind = data.get("type") if isinstance(data, dict) else None
        payload = data.get("payload") if isinstance(data, dict) else None
        if kind not in ("heartbeat", "goodbye") or not isinstance(payload, dict):
            self._refuse(tunnel.CLOSE_PROTOCOL, "protocol error: unknown text message")
            return
        if kind == "goodbye":
            payload = {**payload, "leaving": True}
        status, body = await self._beat(payload, len(raw))
        with contextlib.suppress(tornado.websocket.WebSocketClosedError):
            await self.write_message(
                tunnel.text_message("heartbeat_reply", status=status, body=body)
            )
        if status == 401:
            self._refuse(tunnel.CLOSE_REFUSED, "the key was revoked")
        elif status == 409:
            self._refuse(tunnel.CLOSE_REFUSED, body["error"]["message"])

    async def _beat(self, payload: dict[str, Any], size: int) -> tuple[int, dict[str, Any]]:
        """The heartbeat's reply (a ``size``-byte message) as the HTTP endpoint gives it:
        ``(status, JSON body)``."""
        hub = self.hub
        name = payload.get("name")
        held = self.tunnel.provider
        if held and (not isinstance(name, str) or name.strip() != held):
            err = OpenAIError(
                409,
                f"This tunnel carries provider {held!r}; open another tunnel for another one.",
                "invalid_request_error",
                "provider_name_taken",
                "name",
            )
            return err.status, err.body()
        try:
            owner = await hub.keys.authenticate(self._token)
            if owner is None:
                raise invalid_key()
            accepted = await heartbeats.accept(hub, owner, payload, heartbeats.TUNNEL, size)
        except OpenAIError as err:
            return err.status, err.body()
        if not accepted.leaving and not self._closing_reason:
            self._hold(accepted.provider_id, accepted.name)
        return 200, accepted.reply

    def _hold(self, provider_id: int, name: str) -> None:
        tunnels = self.hub.relay.tunnels
        # A provider first routed under a provisional id gets its store id later.
        if self.provider_id is not None and self.provider_id != provider_id:
            tunnels.release(self.provider_id, self.tunnel)
        if self.provider_id != provider_id:
            # A new tunnel is a new path: what failed on the old one (a closed tunnel, a
            # hub process that died holding it) says nothing about this one.
            self.hub.fleet.succeeded(provider_id)
        self.provider_id, self.tunnel.provider = provider_id, name
        replaced = tunnels.hold(provider_id, self.tunnel)
        if replaced is not None:
            # Its WebSocket is closed, not just its streams: left open, the next beat on it
            # (a second agent with this key and name) took the provider back onto a tunnel
            # already failed. Closed, its agent logs why and dials again.
            replaced.hang_up(
                tunnel.CLOSE_REFUSED,
                f"replaced by a new tunnel for provider {name!r} (another agent with its "
                "name and key?)",
            )
        self._announce()

    def _announce(self) -> None:
        """Log once that the provider is online through this tunnel: once it is named and
        its first pong measured the round trip (a ping goes out as the tunnel opens)."""
        if self._announced or self.provider_id is None or self.tunnel.rtt_ms is None:
            return
        self._announced = True
        log.info("%s online through its tunnel (rtt %.1f ms)", self._who(), self.tunnel.rtt_ms)

    async def _ping_loop(self) -> None:
        interval = self.hub.settings.tunnel_ping_interval
        next_ping = time.monotonic()  # at once: the round trip is in the "online" log line
        while True:
            # Woken at the next ping or at the pong deadline, whichever comes first: checked
            # only at pings, a tunnel dead just after a pong stayed up for three intervals.
            now = time.monotonic()
            deadline, why = self._deadline(interval)
            if now >= deadline:
                self._refuse(tunnel.CLOSE_PING_TIMEOUT, why)
                return
            if now >= next_ping:
                next_ping = now + interval
                try:
                    self.ping(_PING.pack(now))
                except tornado.websocket.WebSocketClosedError:
                    return
            await asyncio.sleep(min(next_ping, deadline) - now)

    def _deadline(self, interval: float) -> tuple[float, str]:
        """When the tunnel is closed unless it shows life, and why. Until a heartbeat was
        accepted that includes one: a tunnel that never names its provider only holds a
        connection."""
        pong = (self._last_pong + 2 * interval, f"no pong for {2 * interval:g} s")
        if self.provider_id is not None:
            return pong
        window = self.hub.settings.online_window
        return min(pong, (self._opened + window, f"no heartbeat accepted in {window:g} s"))

    def on_pong(self, data: bytes) -> None:
        self._last_pong = now = time.monotonic()
        if len(data) == _PING.size:
            self.tunnel.rtt_ms = (now - _PING.unpack(data)[0]) * 1000
            self._announce()

    def _refuse(self, code: int, reason: str) -> None:
        if not self._closing_reason:
            self._closing_reason = reason
            log.warning("closing the tunnel of %s: %s", self._who(), reason)
        # A WebSocket close reason is at most 123 bytes.
        self.close(code, reason.encode()[:120].decode(errors="ignore"))
        # Tornado then waits up to 5 s for the agent's closing frame, which a dead link never
        # sends: the provider leaves routing now, not when on_close comes.
        self._let_go(reason)

    def _who(self) -> str:
        name = f"provider {self.tunnel.provider!r}" if self.tunnel.provider else "no provider"
        return f"{name} of {self.owner.login}"

    def on_close(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
        reason = self._closing_reason or self.close_reason or "the agent closed it"
        self._let_go(reason)
        log.info("tunnel of %s closed: %s", self._who(), reason)

    def _let_go(self, reason: str) -> None:
        """Fail the tunnel's streams and take its provider out of routing (once)."""
        self.tunnel.close(reason)
        if self.provider_id is not None and self.hub.relay.tunnels.release(
            self.provider_id, self.tunnel
        ):
            # Like a goodbye: no new request goes there until the agent beats again.
            self.hub.fleet.leaving(self.provider_id)
            log.info("%s offline: its tunnel closed (%s)", self._who(), reason)


routes = [(tunnel.TUNNEL_PATH, TunnelHandler)]
