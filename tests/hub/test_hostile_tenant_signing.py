"""A hostile tenant against the signed hub->agent channel (issue 9): the real hub, Alice's real
agent and engine, and Mallory with nothing but her own key, her own provider and whatever she
can capture on the plain-http network between the hub and Alice's agent.

Each attack is shown refused with a 401 and its code, and Alice's engine sees none of it.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest

from inferclub.testing import AgentProcess, manifest_text
from tests.support.fakes import FakeVllm
from tests.support.fakes.agent import LLM, FakeAgent
from tests.support.fakes.base import FakeHandler, FakeServer
from tests.support.hubthread import HubThread, hub_in_thread

pytestmark = pytest.mark.subprocess

CHAT = {"model": "Qwen/Qwen3-8B", "messages": [{"role": "user", "content": "hi"}]}


class Wiretap(FakeServer):
    """The network between the hub and Alice's agent: passes every request on to ``target``
    unchanged and keeps a copy, as anyone on a plain-http path could."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = urlsplit(target)

    def routes(self) -> list[Any]:
        return [(r"/v1/.*", TapHandler, {"fake": self})]


class TapHandler(FakeHandler):
    fake: Wiretap

    def relay(self) -> None:
        # Blocking is fine: the tap has a thread of its own and one request at a time.
        status, body = send(
            self.fake.target.geturl(),
            self.request.method or "GET",
            self.request.uri or "",
            dict(self.request.headers),
            self.request.body,
        )
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(body)

    get = post = relay  # type: ignore[assignment]


def send(
    url: str, method: str, target: str, headers: dict[str, str], body: bytes | None
) -> tuple[int, bytes]:
    """``method target`` on the server at ``url``, headers and body exactly as given."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    drop = {"host", "content-length", "connection", "accept-encoding"}
    try:
        conn.request(
            method,
            target,
            body=body,
            headers={k: v for k, v in headers.items() if k.lower() not in drop},
        )
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.fixture
def vllm_engine() -> Iterator[FakeVllm]:
    with FakeVllm() as fake:
        yield fake


@pytest.fixture
def tenants(tmp_path: Path) -> Iterator[HubThread]:
    with hub_in_thread(tmp_path / "hub") as hub:
        yield hub


def start_alice(
    hub: HubThread, tmp_path: Path, engine: FakeVllm, tap: Wiretap | None
) -> AgentProcess:
    """Alice's agent serving ``engine``; the hub reaches it through ``tap`` if there is one."""
    key = hub.user_with_key("alice")
    manifest = tmp_path / "alice.yaml"
    manifest.write_text(manifest_text({"name": "vllm-qwen", "engine": "vllm", "url": engine.url}))
    args = ["run", "--manifest", str(manifest), "--hub", hub.url, "--key", key]
    args += ["--listen", "127.0.0.1:0", "--name", "rig", "--heartbeat-interval", "1"]
    args += ["--known-hubs", str(tmp_path / "known_hubs")]
    if tap is not None:
        args += ["--callback-url", tap.url]
    agent = AgentProcess(args)
    agent.wait_listening()
    agent.wait_registered()
    return agent


def chat_through_hub(hub: HubThread, key: str, model: str = "Qwen/Qwen3-8B") -> str:
    with openai.OpenAI(base_url=hub.api_base, api_key=key, max_retries=0) as sdk:
        reply = sdk.chat.completions.create(model=model, messages=CHAT["messages"])  # type: ignore[arg-type]
    return reply.choices[0].message.content or ""


def error_code(body: bytes) -> str:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return str(error["code"])


def test_a_captured_request_cannot_be_replayed(
    tenants: HubThread, tmp_path: Path, vllm_engine: FakeVllm
) -> None:
    with Wiretap("http://127.0.0.1:1") as tap:
        alice = start_alice(tenants, tmp_path, vllm_engine, tap)
        try:
            tap.target = urlsplit(alice.url)
            alice_key = tenants.create_key("alice")
            # Alice's chat works through the tap (the hub signs, her agent verifies)...
            assert chat_through_hub(tenants, alice_key).startswith("tok0")
            [captured] = [r for r in tap.requests if r.method == "POST"]
            # ...and Mallory sends what she captured again, byte for byte.
            status, body = send(
                alice.url, "POST", "/v1/chat/completions", captured.headers, captured.body
            )
        finally:
            alice.kill()
    assert (status, error_code(body)) == (401, "signature_replayed")
    assert len(vllm_engine.posts("/v1/chat/completions")) == 1


def test_a_request_signed_for_another_provider_is_refused(
    tenants: HubThread, tmp_path: Path, vllm_engine: FakeVllm
) -> None:
    """Mallory's own provider receives requests the hub really signed, fresh and never seen by
    Alice's agent: sent there, they are still refused, because they name Mallory's provider."""
    alice = start_alice(tenants, tmp_path, vllm_engine, None)
    try:
        mallory = tenants.user_with_key("mallory")
        with FakeAgent(["m1"]) as own:
            status, _ = tenants.heartbeat(mallory, "trap", own.url, LLM)
            assert status == 200
            chat_through_hub(tenants, mallory, "m1")
            [captured] = own.posts("/v1/chat/completions")
        body = json.dumps(CHAT).encode()
        status, answer = send(
            alice.url,
            "POST",
            "/v1/chat/completions",
            {**captured.headers, "X-InferClub-Service": "vllm-qwen"},
            captured.body,
        )
        assert (status, error_code(answer)) == (401, "signature_invalid")
        # With Alice's body instead of the one signed: refused as well.
        status, answer = send(alice.url, "POST", "/v1/chat/completions", captured.headers, body)
        assert (status, error_code(answer)) == (401, "signature_invalid")
    finally:
        alice.kill()
    assert vllm_engine.posts("/v1/chat/completions") == []


def test_the_token_derived_from_the_provider_id_no_longer_works(
    tenants: HubThread, tmp_path: Path, vllm_engine: FakeVllm
) -> None:
    """The old bearer token (derived from the pepper and the provider id, the same after a
    provider id was handed out again) opens nothing, even to someone who knows it."""
    alice = start_alice(tenants, tmp_path, vllm_engine, None)
    try:
        [provider_id] = [row["id"] for row in tenants.query("SELECT id FROM providers")]
        pepper = tenants.app.hub.secrets.pepper
        # What earlier hubs sent as `Authorization: Bearer <callback_token>`.
        purpose = f"callback-token:{provider_id}".encode()
        token = hmac.new(pepper, purpose, hashlib.sha256).hexdigest()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        headers["X-InferClub-Service"] = "vllm-qwen"
        status, answer = send(
            alice.url, "POST", "/v1/chat/completions", headers, json.dumps(CHAT).encode()
        )
    finally:
        alice.kill()
    assert (status, error_code(answer)) == (401, "signature_missing")
    assert vllm_engine.posts("/v1/chat/completions") == []
