"""The relay between a client and an agent.

- :mod:`.connect` opens the request to the route's agent (connect and first-byte timeouts).
- :mod:`.whole` relays JSON bodies and errors read whole; :mod:`.stream` relays everything
  else as it arrives (server-sent events event by event, other bodies chunk by chunk).
- :mod:`.meter` owns the request's history row; the relay and the handler only report to it.

The caller runs :meth:`Relay.forward` in a task and cancels it when the client disconnects;
cancelling closes the agent connection at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from urllib.parse import urlsplit

import aiohttp

from inferclub import signing
from inferclub.hub.callback_policy import CallbackPolicy, policy_connector
from inferclub.hub.reachability import reachability_kind
from inferclub.hub.relay.connect import (
    Timeouts,
    Upstream,
    UpstreamResponse,
    no_answer,
    open_upstream,
)
from inferclub.hub.relay.meter import Outcome, RequestMeter
from inferclub.hub.relay.stream import Sink, relay_stream
from inferclub.hub.relay.whole import Transform, is_whole, relay_whole
from inferclub.hub.tunnels import (
    PROVIDER_ID_HEADER,
    TUNNEL_HOST,
    Tunnels,
    unreachable,
)

log = logging.getLogger(__name__)

__all__ = [
    "Outcome",
    "Relay",
    "RequestMeter",
    "Sink",
    "Timeouts",
    "Transform",
    "Upstream",
]


class Relay:
    """Forwards requests to agents over one pool of kept-alive connections."""

    def __init__(
        self, timeouts: Timeouts, policy: CallbackPolicy, signer: signing.HubSigner
    ) -> None:
        self.timeouts = timeouts
        self.policy = policy
        self.signer = signer
        self._session: aiohttp.ClientSession | None = None
        #: The agents' tunnels this process holds.
        self.tunnels = Tunnels()
        #: To other hub processes' internal listeners (tunnels they hold).
        self._internal: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # Keep agent connections warm for a minute: a burst of requests then skips the
        # connection set-up (a round trip or more to a remote agent). Every address is checked
        # against the callback policy right before the connect, and the connection goes to
        # the address checked: a name that rebinds to 127.0.0.1 after its heartbeat is refused.
        connector = policy_connector(self.policy, limit=0, ttl_dns_cache=60, keepalive_timeout=60)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, connect=self.timeouts.connect, sock_connect=self.timeouts.connect
            ),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            # An agent's cookies are nobody's business (and one jar would share them between
            # users); the default jar also costs a filter pass on every request.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._internal = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=None, connect=self.timeouts.connect),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._internal is not None:
            await self._internal.close()
            self._internal = None

    async def probe(self, callback_url: str, provider_id: int, timeout: float = 3.0) -> str | None:
        """Can the hub reach an agent? None if any HTTP answer came back, else the kind of
        failure. Only the kind: the remote side's bytes (a banner) never leave this method."""
        assert self._session is not None, "relay not started"
        url = callback_url.rstrip("/") + "/models"
        # Signed like any request, so an agent that already knows its provider id lists its
        # models; one that does not yet (its first heartbeat) answers 503, which counts too.
        request_id = "probe_" + secrets.token_hex(12)
        headers = self.signer.sign(
            "GET", signing.request_target(url), request_id, str(provider_id), b"", service=""
        )
        try:
            async with asyncio.timeout(timeout):
                async with self._session.get(
                    url,
                    headers=headers,
                    allow_redirects=False,
                ) as resp:
                    # The status line is the answer. The body is not read: an agent that
                    # streamed an endless one filled the hub's memory for the whole timeout
                    # (+400 MiB per heartbeat). Closing drops the connection unread.
                    resp.close()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return reachability_kind(exc)
        return None

    async def forward(
        self,
        sink: Sink,
        upstream: Upstream,
        body: bytes,
        meter: RequestMeter,
        strip_usage: bool = False,
        transform: Transform | None = None,
    ) -> None:
        """Send ``body`` upstream and relay the answer into ``sink``, reporting to ``meter``.

        Raises :class:`~inferclub.openai_errors.OpenAIError` while nothing has been sent (the
        caller answers with it); later failures end the stream with an error event instead.
        """
        resp = await self.open(upstream, body)
        await self.answer(sink, resp, meter, strip_usage, transform)

    async def open(
        self, upstream: Upstream, body: bytes, first_byte: float | None = None
    ) -> UpstreamResponse:
        """Send ``body`` upstream and wait for the response headers, at most ``first_byte``
        seconds (default: the ``first_byte`` timeout). Raises
        :class:`~inferclub.openai_errors.OpenAIError` (502, 504) when that fails."""
        assert self._session is not None, "relay not started"
        if first_byte is None:
            first_byte = self.timeouts.first_byte
        if upstream.tunnel:
            return await self._open_tunnel(upstream, body, first_byte)
        return await open_upstream(self._session, self.timeouts, upstream, body, first_byte)

    async def _open_tunnel(
        self, upstream: Upstream, body: bytes, first_byte: float
    ) -> UpstreamResponse:
        """The request through the agent's tunnel, when this process holds it, else through
        the process that does; a tunnel that is gone is a refused connection (the handler
        tries the next candidate)."""
        held = self.tunnels.get(upstream.provider_id)
        if held is None:
            return await self._open_elsewhere(upstream, body, first_byte)
        try:
            async with asyncio.timeout(first_byte):
                return await held.open(upstream, body)
        except TimeoutError:
            raise no_answer(upstream, first_byte) from None

    async def _open_elsewhere(
        self, upstream: Upstream, body: bytes, first_byte: float
    ) -> UpstreamResponse:
        """Another hub process holds the tunnel: its internal listener, whose URL it recorded
        as the provider's, relays the request into it. That URL is the hubs' own, so the
        callback policy does not apply to it."""
        assert self._internal is not None, "relay not started"
        if urlsplit(upstream.url).hostname == TUNNEL_HOST:
            raise unreachable(upstream.who, "its tunnel is not connected")
        log.debug("%s: the tunnel of %s is held at %s", upstream.target, upstream.who, upstream.url)
        headers = {**upstream.headers, PROVIDER_ID_HEADER: str(upstream.provider_id)}
        elsewhere = dataclasses.replace(upstream, headers=headers)
        timeouts = Timeouts(self.timeouts.connect, first_byte, self.timeouts.idle)
        return await open_upstream(self._internal, timeouts, elsewhere, body)

    async def answer(
        self,
        sink: Sink,
        resp: UpstreamResponse,
        meter: RequestMeter,
        strip_usage: bool = False,
        transform: Transform | None = None,
    ) -> None:
        """Relay an opened answer into ``sink``, and close it."""
        try:
            meter.first_byte()
            if is_whole(resp):
                await relay_whole(sink, resp, meter, self.timeouts.idle, transform)
            else:
                await relay_stream(sink, resp, meter, self.timeouts.idle, strip_usage)
        finally:
            resp.close()
