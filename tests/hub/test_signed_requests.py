"""The hub's side of signed requests (docs/signing.md): what it publishes, what it signs, and
its key on disk.

The verifier below is written from docs/signing.md with nothing but `cryptography`'s Ed25519
and the standard library; it does not import `inferclub.signing`, so a signature that passes
it is one a second implementation, written from the docs, would accept.
"""

from __future__ import annotations

import base64
import hashlib
import stat
import time
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tests.support.fakes.agent import LLM, FakeAgent
from tests.support.fakes.base import Recorded
from tests.support.hubapp import HubApp, running_hub


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def docs_verify(hub_key: str, provider_id: int, request: Recorded) -> bool:
    """Section "What is signed" of docs/signing.md, step 4 of "Verifying"."""
    assert hub_key.startswith("ed25519:") and len(hub_key) == 8 + 43
    public = Ed25519PublicKey.from_public_bytes(unb64url(hub_key[len("ed25519:") :]))
    target = request.path + (f"?{request.query}" if request.query else "")
    fields = [
        "inferclub-request-v2",
        request.method,
        target,
        request.headers["X-Inferclub-Timestamp"],
        request.headers["X-Request-Id"],
        str(provider_id),
        request.headers.get("X-Inferclub-Service", ""),
        hashlib.sha256(request.body).hexdigest(),
    ]
    signature = request.headers["X-Inferclub-Signature"]
    assert len(signature) == 86
    try:
        public.verify(unb64url(signature), "\n".join(fields).encode("ascii"))
    except InvalidSignature:
        return False
    return True


async def test_the_hub_signs_what_it_forwards_as_the_docs_say(
    hub_app: HubApp, fake_agent: FakeAgent
) -> None:
    key = await hub_app.user_with_key("alice")
    status, reply = await hub_app.heartbeat(key, "rig", fake_agent.url, LLM)
    assert status == 200
    # The key is public: no API key needed, and the same as in the heartbeat reply.
    status, published = await hub_app.get_json("/v1/agent/hub-key", None)
    assert status == 200
    assert published == {"object": "hub_key", "algorithm": "ed25519", "key": reply["hub_key"]}

    answer = await hub_app.client(key).chat.completions.create(
        model="m1", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    async for _ in answer:
        pass
    sent = fake_agent.posts("/v1/chat/completions")[-1]
    provider_id = reply["provider_id"]
    assert docs_verify(published["key"], provider_id, sent)
    assert abs(int(sent.headers["X-Inferclub-Timestamp"]) - time.time()) < 30
    assert sent.headers["X-Request-Id"] == answer.response.headers["X-Request-Id"]
    # The body signed is the body sent: the hub's own edit (usage asked for) included.
    assert b'"include_usage"' in sent.body
    # What makes a second implementation refuse: another provider, another body.
    assert not docs_verify(published["key"], provider_id + 1, sent)
    tampered = Recorded(sent.method, sent.path, sent.query, sent.headers, sent.body + b" ")
    assert not docs_verify(published["key"], provider_id, tampered)
    assert sent.headers["X-Inferclub-Service"] == LLM[0]["name"]
    other = {**sent.headers, "X-Inferclub-Service": "other"}
    rerouted = Recorded(sent.method, sent.path, sent.query, other, sent.body)
    assert not docs_verify(published["key"], provider_id, rerouted)
    # The reachability probe is signed the same way (GET, empty body).
    probe = fake_agent.requests[0]
    assert (probe.method, probe.path) == ("GET", "/v1/models")
    assert docs_verify(published["key"], provider_id, probe)


async def test_hub_key_endpoint_takes_only_get(hub_app: HubApp) -> None:
    status, body = await hub_app.post_json("/v1/agent/hub-key", {}, None)
    assert status == 405
    assert set(body["error"]) == {"message", "type", "param", "code"}


async def test_the_key_file_is_private_and_kept_across_restarts(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as first:
        key = first.hub.signer.public_key
    path = tmp_path / "hub.db.hub-key.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    async with running_hub(tmp_path) as second:
        assert second.hub.signer.public_key == key
        status, published = await second.get_json("/v1/agent/hub-key", None)
        assert (status, published["key"]) == (200, key)
