"""A streamed chat sent straight to an agent's callback server, as the hub sends it, on a raw
connection the test keeps: to read chunks as they arrive, or to close it mid-request."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

from inferclub import wire
from inferclub.testing import CALLBACK_TOKEN


def open_chat_stream(
    agent_url: str, service: str, model: str = "Qwen/Qwen3-8B"
) -> http.client.HTTPConnection:
    """POST a streaming chat for ``model`` to ``service``; the caller reads the response."""
    parts = urlsplit(agent_url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=json.dumps({"model": model, "messages": [], "stream": True}),
        headers={
            wire.AUTH_HEADER: wire.bearer(CALLBACK_TOKEN),
            wire.SERVICE_HEADER: service,
            "Content-Type": "application/json",
        },
    )
    return conn
