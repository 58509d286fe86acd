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
import secrets

import aiohttp

from inferclub import signing
from inferclub.hub.callback_policy import CallbackPolicy, policy_connector
from inferclub.hub.reachability import reachability_kind
from inferclub.hub.relay.connect import Timeouts, Upstream, open_upstream
from inferclub.hub.relay.meter import Outcome, RequestMeter
from inferclub.hub.relay.stream import Sink, relay_stream
from inferclub.hub.relay.whole import Transform, is_whole, relay_whole

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
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def probe(self, callback_url: str, provider_id: int, timeout: float = 3.0) -> str | None:
        """Can the hub reach an agent? None if any HTTP answer came back, else the kind of
        failure. Only the kind: the remote side's bytes (a banner) never leave this method."""
        assert self._session is not None, "relay not started"
        url = callback_url.rstrip("/") + "/models"
        # Signed like any request, so an agent that already knows its provider id lists its
        # models; one that does not yet (its first heartbeat) answers 503, which counts too.
        request_id = "probe_" + secrets.token_hex(12)
        headers = self.signer.sign(
            "GET", signing.request_target(url), request_id, str(provider_id), b""
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
    ) -> aiohttp.ClientResponse:
        """Send ``body`` upstream and wait for the response headers, at most ``first_byte``
        seconds (default: the ``first_byte`` timeout). Raises
        :class:`~inferclub.openai_errors.OpenAIError` (502, 504) when that fails."""
        assert self._session is not None, "relay not started"
        timeouts = self.timeouts
        if first_byte is not None:
            # Not dataclasses.replace, which looks up the fields anew on every request.
            timeouts = Timeouts(timeouts.connect, first_byte, timeouts.idle)
        return await open_upstream(self._session, timeouts, upstream, body)

    async def answer(
        self,
        sink: Sink,
        resp: aiohttp.ClientResponse,
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
