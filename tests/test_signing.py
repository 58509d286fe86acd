"""Signed hub->agent requests: what the agent accepts and refuses, the documented scheme checked
by an independent verifier, the hub's key file and the agent's key pinning."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import stat
from pathlib import Path

import aiohttp
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from tornado.httputil import HTTPHeaders

from inferclub.signing import (
    HubKeyChanged,
    HubSigner,
    KnownHubs,
    RequestVerifier,
    SignatureRejected,
    SigningError,
    hub_key_path,
    load_or_create_hub_key,
    request_target,
)

DOC = (Path(__file__).resolve().parents[1] / "docs" / "signing.md").read_text()

# The test vector of docs/signing.md.
SEED = bytes(range(32))
PUBLIC = "ed25519:A6EHv_POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg"
NOW = 1767225600
REQUEST_ID = "req_0123456789abcdef01234567"
BODY = b'{"model":"m1","messages":[{"role":"user","content":"hi"}]}'
SIGNATURE = "1DKYcVwYRWWxiVh0WeAFlwep0uXRnRWeyDxXAUggddu53QsvDUrKWQBGqbP-UpJTUJhMa5q7ZWFUyRGN9ebIBA"
PATH = "/v1/chat/completions"
SERVICE = "llama"


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def hub(clock: Clock | None = None, seed: bytes = SEED) -> HubSigner:
    return HubSigner(Ed25519PrivateKey.from_private_bytes(seed), clock=clock or Clock())


def agent(clock: Clock | None = None, **kwargs: int) -> RequestVerifier:
    return RequestVerifier(PUBLIC, clock=clock or Clock(), **kwargs)


def signed(
    request_id: str = REQUEST_ID, body: bytes = BODY, provider: str = "42", at: float = NOW
) -> dict[str, str]:
    headers = hub(Clock(at)).sign("POST", PATH, request_id, provider, body, service=SERVICE)
    return {"X-InferClub-Service": SERVICE, **headers}


def rejection(verifier: RequestVerifier, headers: dict[str, str], **changes: object) -> str:
    request: dict[str, object] = {
        "method": "POST",
        "target": PATH,
        "headers": headers,
        "body": BODY,
        "provider_id": "42",
    }
    request.update(changes)
    with pytest.raises(SignatureRejected) as info:
        verifier.verify(**request)  # type: ignore[arg-type]
    return info.value.code


# -- accepted and refused ----------------------------------------------------------------


def test_a_signed_request_is_accepted() -> None:
    agent().verify("POST", PATH, signed(), BODY, "42")


def test_header_names_are_case_insensitive_as_a_server_receives_them() -> None:
    headers = HTTPHeaders({name.lower(): value for name, value in signed().items()})
    agent().verify("POST", PATH, headers, BODY, "42")


@pytest.mark.parametrize(
    "change",
    [
        {"body": BODY + b" "},
        {"body": b""},
        {"target": "/v1/completions"},
        {"target": PATH + "?x=1"},
        {"method": "PUT"},
        {"provider_id": "43"},
        {"provider_id": "420"},
    ],
)
def test_a_changed_request_or_another_provider_is_refused(change: dict[str, object]) -> None:
    assert rejection(agent(), signed(), **change) == "signature_invalid"


def test_another_key_is_refused() -> None:
    forged = hub(seed=bytes(32)).sign("POST", PATH, REQUEST_ID, "42", BODY, service=SERVICE)
    assert rejection(agent(), {**signed(), **forged}) == "signature_invalid"


def test_another_service_than_signed_is_refused() -> None:
    """The service header picks which of the agent's services serves: changed, dropped or
    added on the way, the request is refused."""
    assert rejection(agent(), {**signed(), "X-InferClub-Service": "other"}) == "signature_invalid"
    dropped = {k: v for k, v in signed().items() if k != "X-InferClub-Service"}
    assert rejection(agent(), dropped) == "signature_invalid"
    unnamed = hub().sign("POST", PATH, REQUEST_ID, "42", BODY, service="")
    agent().verify("POST", PATH, unnamed, BODY, "42")
    added = {**unnamed, "X-InferClub-Service": SERVICE}
    assert rejection(agent(), added) == "signature_invalid"


@pytest.mark.parametrize("service", ["a\nb", "x" * 65, "-lead", "é"])
def test_a_service_that_could_not_be_signed_is_refused(service: str) -> None:
    with pytest.raises(SigningError):
        hub().sign("POST", PATH, REQUEST_ID, "42", BODY, service=service)
    assert rejection(agent(), {**signed(), "X-InferClub-Service": service}) == "signature_invalid"


def test_a_changed_timestamp_or_request_id_is_refused() -> None:
    headers = signed()
    assert rejection(agent(), {**headers, "X-InferClub-Timestamp": str(NOW - 1)}) == (
        "signature_invalid"
    )
    assert rejection(agent(), {**headers, "X-Request-Id": "req_other"}) == "signature_invalid"


@pytest.mark.parametrize(
    "missing", ["X-InferClub-Timestamp", "X-InferClub-Signature", "X-Request-Id"]
)
def test_an_unsigned_request_is_refused_naming_the_header(missing: str) -> None:
    headers = {k: v for k, v in signed().items() if k != missing}
    with pytest.raises(SignatureRejected) as info:
        agent().verify("POST", PATH, headers, BODY, "42")
    assert info.value.code == "signature_missing" and missing in info.value.message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-InferClub-Timestamp", "1767225600.5"),
        ("X-InferClub-Timestamp", "-1"),
        ("X-InferClub-Timestamp", "01767225600"),
        ("X-InferClub-Signature", SIGNATURE + "="),
        ("X-InferClub-Signature", SIGNATURE[:-1]),
        ("X-InferClub-Signature", SIGNATURE.replace("-", "+")),
        ("X-InferClub-Signature", "v1=" + SIGNATURE),
    ],
)
def test_a_malformed_header_is_refused(name: str, value: str) -> None:
    assert rejection(agent(), {**signed(), name: value}) == "signature_malformed"


def test_a_request_id_outside_the_alphabet_is_refused() -> None:
    assert rejection(agent(), {**signed(), "X-Request-Id": "req 1\n"}) == "signature_invalid"


def test_sixty_seconds_old_is_accepted_and_older_is_refused() -> None:
    clock = Clock(NOW + 60)
    agent(clock).verify("POST", PATH, signed(), BODY, "42")
    clock.now = NOW + 61
    with pytest.raises(SignatureRejected) as info:
        agent(clock).verify("POST", PATH, signed(), BODY, "42")
    assert info.value.code == "signature_expired" and "61 s ago" in info.value.message


def test_a_request_from_the_future_is_refused_beyond_the_skew() -> None:
    agent(Clock(NOW - 10)).verify("POST", PATH, signed(), BODY, "42")
    with pytest.raises(SignatureRejected) as info:
        agent(Clock(NOW - 11)).verify("POST", PATH, signed(), BODY, "42")
    assert info.value.code == "signature_from_future" and "clock" in info.value.message


def test_unsigned_or_stale_requests_are_refused_from_headers_alone() -> None:
    verifier = agent(Clock(NOW + 61))
    with pytest.raises(SignatureRejected) as info:
        verifier.check_headers(HTTPHeaders({"Content-Type": "application/json"}))
    assert info.value.code == "signature_missing"
    with pytest.raises(SignatureRejected) as info:
        verifier.check_headers(signed())
    assert info.value.code == "signature_expired"
    assert agent().check_headers(signed()) == (NOW, SIGNATURE, REQUEST_ID)


def test_a_replay_is_refused() -> None:
    verifier = agent()
    verifier.verify("POST", PATH, signed(), BODY, "42")
    assert rejection(verifier, signed()) == "signature_replayed"
    verifier.verify("POST", PATH, signed("req_second"), BODY, "42")


def test_forged_requests_are_not_remembered() -> None:
    verifier = agent()
    forged = hub(seed=bytes(32))
    for n in range(100):
        headers = forged.sign("POST", PATH, f"req_{n}", "42", BODY, service="")
        assert rejection(verifier, headers) == "signature_invalid"
    assert len(verifier.replays) == 0


def test_the_replay_memory_stays_bounded_and_never_lets_a_replay_through() -> None:
    clock = Clock()
    verifier = agent(clock, cache_size=50)
    first = [signed(f"req_{n}") for n in range(50)]
    for headers in first:
        verifier.verify("POST", PATH, headers, BODY, "42")
    clock.now = NOW + 1
    flood = [signed(f"req_flood_{n}", at=NOW + 1) for n in range(200)]
    codes = []
    for headers in flood:
        try:
            verifier.verify("POST", PATH, headers, BODY, "42")
            codes.append("ok")
        except SignatureRejected as exc:
            codes.append(exc.code)
        assert len(verifier.replays) <= 50
    # The flood pushes out the older requests until it must push out one of its own; from
    # then on its requests share the second of a forgotten one and cannot be told from replays.
    assert codes[:51] == ["ok"] * 51 and set(codes[51:]) == {"replay_cache_full"}
    for headers in flood[:51]:
        assert rejection(verifier, headers) in ("signature_replayed", "replay_cache_full")
    for headers in first:
        assert rejection(verifier, headers) == "replay_cache_full"
    # A minute later the window has moved on: old ids are forgotten, new requests pass.
    clock.now = NOW + 62
    verifier.verify("POST", PATH, signed("req_later", at=NOW + 62), BODY, "42")
    assert len(verifier.replays) == 1
    assert rejection(verifier, first[0]) == "signature_expired"


# -- the documented scheme, checked without the module's helpers ----------------------


def independent_message(method: str, target: str, headers: dict[str, str], body: bytes) -> bytes:
    fields = [
        "inferclub-request-v2",
        method,
        target,
        headers["X-InferClub-Timestamp"],
        headers["X-Request-Id"],
        "42",
        headers.get("X-InferClub-Service", ""),
        hashlib.sha256(body).hexdigest(),
    ]
    return "\n".join(fields).encode("ascii")


def independent_verify(
    key_text: str, method: str, target: str, headers: dict[str, str], body: bytes
) -> None:
    """A verifier written from docs/signing.md alone: raises InvalidSignature."""
    assert key_text.startswith("ed25519:")
    raw_key = base64.urlsafe_b64decode(key_text[len("ed25519:") :] + "=")
    signature = base64.urlsafe_b64decode(headers["X-InferClub-Signature"] + "==")
    assert len(raw_key) == 32 and len(signature) == 64
    Ed25519PublicKey.from_public_bytes(raw_key).verify(
        signature, independent_message(method, target, headers, body)
    )


def test_an_independent_verifier_accepts_the_hubs_signature() -> None:
    signer = hub()
    headers = {"X-InferClub-Service": SERVICE}
    headers.update(signer.sign("POST", PATH, REQUEST_ID, "42", BODY, service=SERVICE))
    assert signer.public_key == PUBLIC
    independent_verify(signer.public_key, "POST", PATH, headers, BODY)
    with pytest.raises(InvalidSignature):
        independent_verify(signer.public_key, "POST", PATH, headers, BODY + b"x")


def test_the_agent_accepts_an_independent_signature() -> None:
    headers = {"X-InferClub-Timestamp": str(NOW), "X-Request-Id": "req_independent"}
    message = independent_message("GET", "/v1/models", headers, b"")
    signature = Ed25519PrivateKey.from_private_bytes(SEED).sign(message)
    headers["X-InferClub-Signature"] = base64.urlsafe_b64encode(signature).decode().rstrip("=")
    agent().verify("GET", "/v1/models", headers, b"", "42")


def test_the_documented_example_is_exact() -> None:
    assert signed() == {
        "X-InferClub-Service": SERVICE,
        "X-InferClub-Timestamp": str(NOW),
        "X-InferClub-Signature": SIGNATURE,
        "X-Request-Id": REQUEST_ID,
    }
    for value in (PUBLIC, SIGNATURE, REQUEST_ID, str(NOW), BODY.decode()):
        assert value in DOC
    assert hashlib.sha256(BODY).hexdigest() in DOC
    independent_verify(PUBLIC, "POST", PATH, signed(), BODY)


async def test_a_signature_survives_a_real_http_hop() -> None:
    """The hub signs the target aiohttp will send; the agent checks the raw request line."""
    received: list[tuple[bytes, bytes]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        received.append((head, await reader.readexactly(length)))
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/agent base/v1/audio/transcriptions"
    body = b"\x00\xffbinary body"
    try:
        headers = hub().sign("POST", request_target(url), REQUEST_ID, "42", body, service="")
        async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers) as resp:
            assert resp.status == 204
    finally:
        server.close()
        await server.wait_closed()
    head, got_body = received[0]
    request_line, *header_lines = head.decode("ascii").split("\r\n")
    method, target, _ = request_line.split(" ")
    assert target == "/agent%20base/v1/audio/transcriptions"
    got = HTTPHeaders()
    for line in filter(None, header_lines):
        got.parse_line(line)
    agent().verify(method, target, got, got_body, "42")


# -- the hub's key file -----------------------------------------------------------------


def test_the_hub_key_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = hub_key_path(tmp_path / "inferclub.db.secrets.json")
    assert path.name == "inferclub.db.hub-key.pem"
    first = HubSigner(load_or_create_hub_key(path)).public_key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert HubSigner(load_or_create_hub_key(path)).public_key == first
    assert path.read_text().startswith("-----BEGIN PRIVATE KEY-----")


def test_an_unreadable_hub_key_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "hub-key.pem"
    path.write_text("not a key")
    with pytest.raises(SigningError) as info:
        load_or_create_hub_key(path)
    assert str(path) in str(info.value)


# -- pinning -----------------------------------------------------------------------------


OTHER = HubSigner(Ed25519PrivateKey.from_private_bytes(bytes(32))).public_key


def test_the_first_key_is_pinned_in_a_private_file(tmp_path: Path) -> None:
    known = KnownHubs(tmp_path / "state" / "known_hubs")
    assert known.pin_or_check("https://Hub.Example.org/", PUBLIC) == PUBLIC
    assert stat.S_IMODE(known.path.stat().st_mode) == 0o600
    assert "https://hub.example.org " + PUBLIC in known.path.read_text()
    assert known.pin_or_check("https://hub.example.org", PUBLIC) == PUBLIC
    assert known.pin_or_check("https://other.example.org", OTHER) == OTHER
    assert known.read() == {"https://hub.example.org": PUBLIC, "https://other.example.org": OTHER}


def test_a_changed_key_is_refused_loudly_naming_the_file(tmp_path: Path) -> None:
    known = KnownHubs(tmp_path / "known_hubs")
    known.pin_or_check("https://hub.example.org", PUBLIC)
    with pytest.raises(HubKeyChanged) as info:
        known.pin_or_check("https://hub.example.org", OTHER)
    message = str(info.value)
    assert str(known.path) in message and PUBLIC in message and OTHER in message
    assert "CHANGED" in message
    assert known.read() == {"https://hub.example.org": PUBLIC}


def test_an_explicit_key_overrides_the_file(tmp_path: Path) -> None:
    known = KnownHubs(tmp_path / "known_hubs")
    known.pin_or_check("https://hub.example.org", PUBLIC)
    before = known.path.read_text()
    assert known.pin_or_check("https://hub.example.org", OTHER, explicit=OTHER) == OTHER
    with pytest.raises(HubKeyChanged):
        known.pin_or_check("https://hub.example.org", PUBLIC, explicit=OTHER)
    assert known.path.read_text() == before
    unused = KnownHubs(tmp_path / "unused")
    assert unused.pin_or_check("https://x.example", OTHER, explicit=OTHER) == OTHER
    assert not unused.path.exists()


def test_a_broken_pin_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "known_hubs"
    path.write_text("https://hub.example.org not-a-key\n")
    with pytest.raises(SigningError) as info:
        KnownHubs(path).pin_or_check("https://hub.example.org", PUBLIC)
    assert f"{path}:1" in str(info.value)
