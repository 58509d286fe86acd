"""Signed hub->agent requests (Ed25519), shared by the hub and the agent.

The hub signs every request it forwards to an agent; the agent answers 401 to anything
unsigned, signed for another provider, older than a minute, or seen before. The scheme is
specified in ``docs/signing.md`` so that other agents can implement it; this module is the
reference. In short: the signed message is::

    inferclub-request-v2 LF METHOD LF TARGET LF TIMESTAMP LF REQUEST_ID LF PROVIDER_ID LF SERVICE
    LF SHA256_HEX

sent as ``X-InferClub-Timestamp`` (Unix seconds), ``X-InferClub-Signature`` (base64url, no
padding) and ``X-Request-Id``; SERVICE is the ``X-InferClub-Service`` header (empty without
one), so the service that serves a request cannot be changed on the way either. Keys are
written ``ed25519:<base64url of the 32 raw bytes>``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import nacl.bindings
import platformdirs
import yarl
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from inferclub.wire import SERVICE_HEADER

log = logging.getLogger(__name__)

VERSION = "inferclub-request-v2"
TIMESTAMP_HEADER = "X-InferClub-Timestamp"
SIGNATURE_HEADER = "X-InferClub-Signature"
REQUEST_ID_HEADER = "X-Request-Id"
KEY_PREFIX = "ed25519:"
#: Oldest a signed request may be when it arrives, in seconds.
MAX_AGE = 60.0
#: How far ahead of the agent's clock a timestamp may be, in seconds.
FUTURE_SKEW = 10.0
#: Request ids remembered for replay detection; beyond this the oldest are forgotten and
#: every request at least as old is refused (so no replay ever gets through).
REPLAY_CACHE_SIZE = 65536

_TOKEN = re.compile(r"[A-Z]{1,16}")
_TARGET = re.compile(r"/[\x21-\x7e]{0,8191}")
_FIELD = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: A service name as the manifest allows it (``wire.NAME``), or empty: no service header.
_SERVICE = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9._-]{0,63})?")
_TIMESTAMP = re.compile(r"0|[1-9][0-9]{0,15}")
_SIGNATURE = re.compile(r"[A-Za-z0-9_-]{86}")
_KEY = re.compile(r"ed25519:[A-Za-z0-9_-]{43}")
_DIGEST = re.compile(r"[0-9a-f]{64}")


class SigningError(ValueError):
    """A key, key file or signed field is unusable; the message says which and why."""


class HubKeyChanged(SigningError):
    """The hub presents another key than the one pinned for it (or set explicitly)."""


class SignatureRejected(Exception):
    """Why the agent refuses a request; :attr:`code` is meant for the 401 body."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        #: ``signature_missing``, ``signature_malformed``, ``signature_expired``,
        #: ``signature_from_future``, ``signature_invalid``, ``signature_replayed`` or
        #: ``replay_cache_full``.
        self.code = code
        self.message = message


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _check(*checks: tuple[str, str, re.Pattern[str]]) -> None:
    for name, value, pattern in checks:
        if not pattern.fullmatch(value):
            raise SigningError(f"cannot sign: the {name} {value[:80]!r} is not allowed")


@functools.lru_cache(maxsize=4096)
def _check_route_fields(method: str, target: str, provider_id: str, service: str) -> None:
    """The fields that are the same for every request to one route: checked once per route
    (a refusal raises, so it is never cached), not with four regular expressions a request."""
    _check(
        ("method", method, _TOKEN),
        ("target", target, _TARGET),
        ("provider id", provider_id, _FIELD),
        ("service", service, _SERVICE),
    )


def canonical_message(
    method: str,
    target: str,
    timestamp: int,
    request_id: str,
    provider_id: str,
    service: str,
    digest: str,
) -> bytes:
    """The exact bytes that are signed. Raises :class:`SigningError` for a field that could
    make the encoding ambiguous (a line feed, non-ASCII, an empty value)."""
    _check_route_fields(method, target, provider_id, service)
    _check(("request id", request_id, _FIELD), ("body digest", digest, _DIGEST))
    if not 0 <= timestamp < 10**16:
        raise SigningError(f"cannot sign: timestamp {timestamp} out of range")
    fields = (VERSION, method, target, str(timestamp), request_id, provider_id, service, digest)
    return "\n".join(fields).encode("ascii")


def request_target(url: str) -> str:
    """The request target aiohttp puts on the request line for ``url`` (path and query, as
    yarl normalises and encodes them): what the hub signs and the agent receives."""
    return yarl.URL(url).raw_path_qs


def public_key_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KEY_PREFIX + _b64(raw)


def parse_public_key(text: str) -> Ed25519PublicKey:
    """Read a key written as ``ed25519:<base64url>``; raises :class:`SigningError`."""
    text = text.strip()
    if not _KEY.fullmatch(text):
        raise SigningError(f"not a hub key (expected ed25519:<43 base64url characters>): {text!r}")
    return Ed25519PublicKey.from_public_bytes(_unb64(text[len(KEY_PREFIX) :]))


def canonical_key(text: str) -> str:
    """``text`` as :func:`public_key_text` writes it, so equal keys compare equal."""
    return public_key_text(parse_public_key(text))


class HubSigner:
    """The hub's side: signs each request it forwards to an agent."""

    def __init__(
        self, private_key: Ed25519PrivateKey, clock: Callable[[], float] = time.time
    ) -> None:
        seed = private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        # libsodium signs with this key: the same signature (Ed25519 is deterministic) for
        # 0.6 of the instructions of OpenSSL's, and the hub signs every request it forwards.
        self._secret = nacl.bindings.crypto_sign_seed_keypair(seed)[1]
        self._clock = clock
        #: The public key as agents see it (``GET /v1/agent/hub-key``, heartbeat replies).
        self.public_key = public_key_text(private_key.public_key())

    def sign(
        self,
        method: str,
        target: str,
        request_id: str,
        provider_id: str,
        body: bytes,
        *,
        service: str,
    ) -> dict[str, str]:
        """The headers to add to a request: timestamp, signature and request id.

        ``target`` is the request target exactly as it goes on the request line (path and
        any query, percent-encoded as sent): :func:`request_target` of the URL. ``service``
        is the value sent in ``X-InferClub-Service``, ``""`` for a request without it.
        """
        timestamp = int(self._clock())
        message = canonical_message(
            method, target, timestamp, request_id, provider_id, service, body_digest(body)
        )
        return {
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: _b64(nacl.bindings.crypto_sign(message, self._secret)[:64]),
            REQUEST_ID_HEADER: request_id,
        }


def hub_key_path(secrets_path: Path) -> Path:
    """Where the hub's signing key lives: beside the secrets file (``x.secrets.json`` ->
    ``x.hub-key.pem``), so hub instances that share the secrets share the key too."""
    name = secrets_path.name.removesuffix(".secrets.json")
    return secrets_path.with_name(name + ".hub-key.pem")


def _write_new(path: Path, data: bytes) -> None:
    """Create ``path`` (mode 0600) unless another process created it first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    try:
        # A link fails if the file exists: concurrent first starts keep one key.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


def load_or_create_hub_key(path: Path) -> Ed25519PrivateKey:
    """Read the hub's Ed25519 private key (PKCS#8 PEM), creating it (mode 0600) on first use."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_new(path, pem)
        return load_or_create_hub_key(path)
    if path.stat().st_mode & 0o077:
        log.warning("%s is readable by other users; it should be mode 0600", path)
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"{path}: unreadable hub signing key ({exc})") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise SigningError(f"{path}: the hub signing key must be an Ed25519 key")
    return loaded


class ReplayCache:
    """Request ids seen within the signature window, in bounded memory.

    Only requests whose signature verified are remembered, so a flood of forged requests
    costs nothing here. When full, the oldest id is forgotten and :attr:`floor` rises to its
    timestamp: any request not newer than the floor is refused, so a forgotten id can never
    be replayed.
    """

    def __init__(self, max_age: float, size: int = REPLAY_CACHE_SIZE) -> None:
        self.max_age = max_age
        self.size = size
        self.floor = -1
        self._seen: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_add(self, request_id: str, timestamp: int, now: float) -> None:
        # Arrival order: an entry leaves once its own timestamp is out of the window.
        while self._seen and next(iter(self._seen.values())) < now - self.max_age:
            self._seen.popitem(last=False)
        if request_id in self._seen:
            raise SignatureRejected(
                "signature_replayed", f"request {request_id} was already received"
            )
        if timestamp <= self.floor:
            raise SignatureRejected(
                "replay_cache_full",
                "too many signed requests within the signature window to tell whether this "
                "one is a replay",
            )
        while len(self._seen) >= self.size:
            _, evicted = self._seen.popitem(last=False)
            self.floor = max(self.floor, evicted)
        self._seen[request_id] = timestamp


class RequestVerifier:
    """The agent's side: checks each request from the hub against the hub's public key."""

    def __init__(
        self,
        hub_key: str,
        *,
        max_age: float = MAX_AGE,
        future_skew: float = FUTURE_SKEW,
        cache_size: int = REPLAY_CACHE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.hub_key = hub_key
        self._key = parse_public_key(hub_key)
        self.max_age = max_age
        self.future_skew = future_skew
        self._clock = clock
        self.replays = ReplayCache(max_age, cache_size)

    def check_headers(self, headers: Mapping[str, str]) -> tuple[int, str, str]:
        """Steps that need no body: the headers are there, well formed and in time.

        An agent calls this before it reads a body, so an unsigned or stale request costs it
        nothing; :meth:`verify` repeats it. Returns (timestamp, signature, request id).
        """
        names = (TIMESTAMP_HEADER, SIGNATURE_HEADER, REQUEST_ID_HEADER)
        found = {name: headers.get(name) for name in names}
        missing = [name for name, value in found.items() if value is None]
        if missing:
            raise SignatureRejected(
                "signature_missing", f"unsigned request: no {', '.join(missing)} header"
            )
        stamp, signature, request_id = (found[name] or "" for name in names)
        if not _TIMESTAMP.fullmatch(stamp) or not _SIGNATURE.fullmatch(signature):
            raise SignatureRejected(
                "signature_malformed",
                f"{TIMESTAMP_HEADER} must be Unix seconds and {SIGNATURE_HEADER} 86 base64url "
                "characters",
            )
        self._check_age(int(stamp), self._clock())
        return int(stamp), signature, request_id

    def verify(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes,
        provider_id: str,
    ) -> None:
        """Accept the request or raise :class:`SignatureRejected`.

        ``headers`` must look names up case-insensitively (Tornado's ``HTTPHeaders``,
        aiohttp's ``CIMultiDictProxy``); ``target`` is the raw request target as received
        (Tornado's ``request.uri``); ``provider_id`` is this agent's own provider id.
        """
        timestamp, signature, request_id = self.check_headers(headers)
        service = headers.get(SERVICE_HEADER, "")
        try:
            message = canonical_message(
                method, target, timestamp, request_id, provider_id, service, body_digest(body)
            )
            self._key.verify(_unb64(signature), message)
        except (SigningError, InvalidSignature, binascii.Error):
            raise SignatureRejected(
                "signature_invalid",
                "the signature does not match this request: it was changed on the way, "
                "signed for another provider, or signed by another hub key",
            ) from None
        self.replays.check_and_add(request_id, timestamp, self._clock())

    def _check_age(self, timestamp: int, now: float) -> None:
        age = now - timestamp
        if age > self.max_age:
            raise SignatureRejected(
                "signature_expired",
                f"the request was signed {age:.0f} s ago; at most {self.max_age:g} s are "
                "accepted (check that hub and agent clocks are in sync)",
            )
        if -age > self.future_skew:
            raise SignatureRejected(
                "signature_from_future",
                f"the request is dated {-age:.0f} s ahead of this agent's clock; at most "
                f"{self.future_skew:g} s are accepted (sync the clocks, e.g. with NTP)",
            )


def normalise_hub_url(url: str) -> str:
    parts = urlsplit(url.strip())
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path.rstrip('/')}"


def default_known_hubs_path() -> Path:
    return Path(platformdirs.user_state_dir("inferclub", appauthor=False)) / "known_hubs"


class KnownHubs:
    """Hub keys an agent has seen, like SSH's ``known_hosts``: one ``URL KEY`` line per hub.

    The first key seen for a hub is pinned; a different key later is refused loudly, because
    whoever holds it could otherwise feed the agent requests as that hub.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, str]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        pins: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            try:
                url, key = fields
                pins[normalise_hub_url(url)] = canonical_key(key)
            except ValueError:
                raise SigningError(
                    f"{self.path}:{number}: expected `HUB_URL ed25519:KEY`"
                ) from None
        return pins

    def _write(self, pins: Mapping[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = ["# Hub signing keys this agent trusts (inference-club-agent). One per hub."]
        lines += [f"{url} {key}" for url, key in sorted(pins.items())]
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        os.replace(tmp, self.path)

    def pin_or_check(self, hub_url: str, key: str, explicit: str | None = None) -> str:
        """Return the key to trust for ``hub_url``, given the ``key`` the hub presents.

        With ``explicit`` (the agent's hub-key setting) the file is neither read nor written.
        Otherwise the first key seen is pinned and later keys must match it. Raises
        :class:`HubKeyChanged`, naming the file to edit, when they do not.
        """
        key = canonical_key(key)
        if explicit is not None:
            if canonical_key(explicit) != key:
                raise HubKeyChanged(
                    f"the hub at {hub_url} presents the key {key}, not the key {explicit.strip()} "
                    "set for it in this agent's configuration; refusing its requests"
                )
            return key
        url = normalise_hub_url(hub_url)
        pins = self.read()
        pinned = pins.get(url)
        if pinned is None:
            pins[url] = key
            self._write(pins)
            log.info("pinned the signing key of %s in %s: %s", url, self.path, key)
            return key
        if pinned != key:
            raise HubKeyChanged(
                f"THE SIGNING KEY OF THE HUB {url} HAS CHANGED: {self.path} pins {pinned}, "
                f"the hub now presents {key}. Someone may be impersonating the hub. If the hub's "
                f"operator replaced the key, delete the line for {url} from {self.path} (or set "
                "the new key explicitly) and restart the agent."
            )
        return key
