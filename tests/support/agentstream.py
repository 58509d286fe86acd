"""Requests sent straight to an agent's callback server, signed as the hub signs them: a
streamed chat on a raw connection the test keeps (to read chunks as they arrive, or to close
it mid-request), and the openai SDK pointed at the agent."""

from __future__ import annotations

import http.client
import json
import secrets
from urllib.parse import urlsplit

import httpx2
import openai

from inferclub import wire
from inferclub.testing import FakeHub


def open_chat_stream(
    hub: FakeHub, agent_url: str, service: str, model: str = "Qwen/Qwen3-8B"
) -> http.client.HTTPConnection:
    """POST a streaming chat for ``model`` to ``service``; the caller reads the response."""
    parts = urlsplit(agent_url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    body = json.dumps({"model": model, "messages": [], "stream": True}).encode()
    request_id = "req_" + secrets.token_hex(12)
    signed = hub.signer.sign(
        "POST", "/v1/chat/completions", request_id, str(hub.provider_id), body, service=service
    )
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=body,
        headers={wire.SERVICE_HEADER: service, "Content-Type": "application/json", **signed},
    )
    return conn


def sdk_client(hub: FakeHub, agent_url: str, service: str | None = None) -> openai.OpenAI:
    """The openai SDK pointed straight at the agent, each request signed by ``hub`` as the
    hub signs what it forwards (the SDK's own bearer key is ignored by the agent)."""

    def sign(request: httpx2.Request) -> None:
        body = request.read()
        target = request.url.raw_path.decode("ascii")
        request_id = "req_" + secrets.token_hex(12)
        request.headers.update(
            hub.signer.sign(
                request.method,
                target,
                request_id,
                str(hub.provider_id),
                body,
                service=service or "",
            )
        )

    headers = {wire.SERVICE_HEADER: service} if service else {}
    return openai.OpenAI(
        base_url=agent_url + "/v1",
        api_key="unused",
        default_headers=headers,
        max_retries=0,
        http_client=httpx2.Client(event_hooks={"request": [sign]}),
    )
