"""A fake hub: the hub's side of the agent protocol, small enough to read in one go.

It accepts ``POST /v1/agent/heartbeat`` with the key it was given, validates each heartbeat with
the real hub's parser (:meth:`inferclub.wire.Heartbeat.parse`, so a plugin whose heartbeat the
hub would refuse fails here too), records it, and answers with its provider id and its public
signing key. It can then send the agent what the hub sends for a consumer request: the path
under the agent's callback URL, signed with the hub's key for that provider (docs/signing.md),
and the service name in ``X-InferClub-Service``.
"""

from __future__ import annotations

import http.client
import json
import secrets
import time
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from inferclub import openai_errors, signing, wire
from inferclub.openai_errors import error_body
from inferclub.testing.servers import FakeHandler, FakeServer

#: The API key `FakeHub` accepts unless given another.
KEY = "hub_TestKey0123456789abcdefghijkl"
#: The provider id `FakeHub` hands out unless given another.
PROVIDER_ID = 7


class AgentResponse(NamedTuple):
    """What an agent answered: the status, headers (lower-case names) and raw body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def send_to_agent(
    callback_url: str,
    method: str,
    path: str,
    body: bytes | dict[str, Any] | None = None,
    *,
    signer: signing.HubSigner | None = None,
    provider_id: int = PROVIDER_ID,
    service: str | None = None,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> AgentResponse:
    """Send ``method path`` (``/chat/completions``: relative to the callback URL, which ends
    in ``/v1``) the way the hub proxies a request; a dict body is sent as JSON.

    With ``signer`` the request is signed for ``provider_id`` (a fresh request id each time);
    without, it is unsigned. ``headers`` are sent last: a test can replace a signed header
    with a stale or forged one, or resend the headers of an earlier request.
    """
    parts = urlsplit(callback_url)
    target = parts.path.rstrip("/") + path
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    sent = {"Content-Type": content_type}
    if service:
        sent[wire.SERVICE_HEADER] = service
    if signer is not None:
        request_id = "req_" + secrets.token_hex(12)
        signed = signer.sign(
            method, target, request_id, str(provider_id), raw or b"", service=service or ""
        )
        sent.update(signed)
    sent.update(headers or {})
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.request(method, target, body=raw, headers=sent)
        resp = conn.getresponse()
        return AgentResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def advertised(beat: dict[str, Any]) -> dict[str, list[str]]:
    """Service name -> models, as one heartbeat advertises them."""
    return {s["name"]: s["models"] for s in beat["services"]}


class FakeHub(FakeServer):
    """``with FakeHub() as hub:`` an agent started with ``--hub hub.root --key hub.key``
    registers here; ``hub.beats`` holds what it sent."""

    def __init__(
        self,
        key: str = KEY,
        provider_id: int = PROVIDER_ID,
        signing_key: Ed25519PrivateKey | None = None,
    ) -> None:
        super().__init__()
        self.key = key
        self.provider_id = provider_id
        #: The hub's private key (a new one for each fake hub unless given one), and the
        #: signer :meth:`proxy` signs with. Replace both to play a hub whose key changed.
        self.signing_key = signing_key or Ed25519PrivateKey.generate()
        self.signer = signing.HubSigner(self.signing_key)
        #: What the hub tells agents: seconds between beats, and how long one counts.
        self.interval = 30
        self.window = 60
        #: Heartbeat payloads accepted, with their arrival time (`time.monotonic()`).
        self.beats: list[tuple[float, dict[str, Any]]] = []
        #: Answer this many heartbeats with a 503 before accepting again.
        self.fail_next = 0

    def routes(self) -> list[Any]:
        return [(wire.HEARTBEAT_PATH, HeartbeatHandler, {"fake": self})]

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10, after: int = 0
    ) -> dict[str, Any]:
        """The first accepted beat (from index `after`) matching `predicate`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, beat in self.beats[after:]:
                if predicate(beat):
                    return beat
            time.sleep(0.02)
        raise AssertionError(f"no matching heartbeat within {timeout}s; got {self.beats[after:]}")

    def last(self) -> dict[str, Any]:
        return self.beats[-1][1] if self.beats else self.wait_for(lambda b: True)

    def proxy(
        self,
        method: str,
        path: str,
        body: bytes | dict[str, Any] | None = None,
        *,
        service: str | None = None,
        callback_url: str | None = None,
        content_type: str = "application/json",
    ) -> AgentResponse:
        """Send a request to the agent as the hub would: to the callback URL of the latest
        heartbeat (or ``callback_url``), signed with this hub's key for its provider id."""
        url = callback_url or self.last()["callback_url"]
        return send_to_agent(
            url,
            method,
            path,
            body,
            signer=self.signer,
            provider_id=self.provider_id,
            service=service,
            content_type=content_type,
        )


class HeartbeatHandler(FakeHandler):
    fake: FakeHub

    def post(self) -> None:
        hub = self.fake
        if self.request.headers.get(wire.AUTH_HEADER) != wire.bearer(hub.key):
            error = openai_errors.invalid_key()
            self.send_json(error.body(), error.status)
            return
        if hub.fail_next > 0:
            hub.fail_next -= 1
            self.send_json(error_body("hub is busy", "server_error"), 503)
            return
        beat = self.json_body()
        try:
            wire.Heartbeat.parse(beat)
        except wire.PayloadError as exc:
            message = f"Invalid heartbeat: {exc}"
            body = error_body(message, "invalid_request_error", exc.field, "invalid_heartbeat")
            self.send_json(body, 400)
            return
        hub.beats.append((time.monotonic(), beat))
        reply = wire.HeartbeatReply(
            hub.provider_id, hub.signer.public_key, hub.interval, hub.window
        )
        self.send_json(reply.to_json())
