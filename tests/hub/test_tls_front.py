"""The documented TLS front: Debian's nginx running contrib/nginx/inferclub.conf in front of the
real hub (subprocess). Streams pass through unbuffered, and with an `https://` public_url the
dashboard's sign-in cookie is `Secure` with the `__Host-` prefix."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from tests.support.fakes.agent import FakeAgent
from tests.support.fakes.base import FakeHandler, chat_chunks, words
from tests.support.hubproc import HubProcess, start_hub
from tests.support.nginx import free_port, nginx_front

pytestmark = pytest.mark.subprocess

LLM = [{"name": "chat", "type": "llm", "engine": "vllm", "features": [], "models": ["m1"]}]


class HeldStream(FakeHandler):
    """Sends the first word, then holds the rest until the client says it has seen it: a
    proxy that buffered the answer would keep that word back, and the client would wait."""

    fake: GatedAgent

    async def post(self) -> None:
        events = chat_chunks("m1", words(3), include_usage=False)
        self.set_header("Content-Type", "text/event-stream")
        first, rest = events[:2], events[2:]  # the role chunk, then the first word
        for event in first:
            self.write(f"data: {json.dumps(event)}\n\n".encode())
        await self.flush()
        self.fake.released = await asyncio.to_thread(self.fake.seen_first.wait, 30)
        for event in rest:
            self.write(f"data: {json.dumps(event)}\n\n".encode())
        self.finish(b"data: [DONE]\n\n")


class GatedAgent(FakeAgent):
    def __init__(self) -> None:
        super().__init__(["m1"])
        self.seen_first = threading.Event()
        self.released = False

    def routes(self) -> list[Any]:
        return [(r"/v1/chat/completions", HeldStream, {"fake": self}), *super().routes()]


def trust(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


@pytest.fixture
def tls_hub(tmp_path: Path) -> Iterator[tuple[HubProcess, str, Path]]:
    """The hub behind nginx: (hub, its public https URL, the certificate to trust)."""
    port = free_port()
    public = f"https://127.0.0.1:{port}"
    # An https public_url narrows callbacks to public networks; the fake agent is on loopback.
    env = {"INFERCLUB_PUBLIC_URL": public, "INFERCLUB_CALLBACK_NETWORKS": "loopback"}
    with start_hub(tmp_path, env=env) as hub:
        hub_port = int(hub.url.rsplit(":", 1)[1])
        with nginx_front(tmp_path, port, hub_port) as cert:
            yield hub, public, cert


def test_a_stream_through_nginx_arrives_chunk_by_chunk(
    tls_hub: tuple[HubProcess, str, Path],
) -> None:
    hub, public, cert = tls_hub
    key = hub.user_with_key("alice")
    with GatedAgent() as agent:
        assert hub.heartbeat(key, "rig", agent.url, LLM)[0] == 200
        with (
            httpx2.Client(verify=trust(cert), timeout=60) as http,
            openai.OpenAI(
                base_url=f"{public}/v1", api_key=key, http_client=http, max_retries=0
            ) as client,
        ):
            stream = client.chat.completions.create(model="m1", messages=[], stream=True)
            text = []
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    text.append(chunk.choices[0].delta.content)
                    agent.seen_first.set()
        # The agent sent the rest only because the client had the first word already.
        assert agent.released
        assert text == words(3)


def test_the_sign_in_cookie_set_through_nginx_is_secure(
    tls_hub: tuple[HubProcess, str, Path],
) -> None:
    hub, public, cert = tls_hub
    hub.create_user("alice")
    link = hub.cli("users", "login-link", "alice").stdout.split()[-1]
    assert link.startswith(f"{public}/")
    with httpx2.Client(verify=trust(cert), timeout=30) as http:
        resp = http.get(link)
    assert resp.status_code == 302
    session = [c for c in resp.headers.get_list("set-cookie") if "inferclub_session=" in c]
    assert len(session) == 1
    attributes = [a.strip().lower() for a in session[0].split(";")]
    assert session[0].startswith("__Host-inferclub_session=")
    assert "secure" in attributes and "httponly" in attributes and "path=/" in attributes
    assert resp.headers["strict-transport-security"] == "max-age=31536000"
