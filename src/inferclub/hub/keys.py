"""API key format, checksum and hashing.

A key looks like ``ic_`` + 30 base62 characters of CSPRNG output (about 178 bits) + a
6-character base62 CRC32 of those 30 characters, GitHub-token style. The checksum lets the hub
reject a mistyped or made-up key without touching the store, and the prefix lets secret
scanners find leaked keys. Only ``HMAC-SHA256(pepper, key)`` is ever stored.

Each key has a scope: ``all`` (the OpenAI API and agent heartbeats), ``inference`` (the
OpenAI API only: a key handed to a client app) or ``agent`` (heartbeats only: a key left on
a GPU box). A key that leaks then gives away no more than its job needs.
"""

from __future__ import annotations

import hmac
import secrets
import zlib

PREFIX = "ic_"
BODY_LEN = 30
CHECK_LEN = 6
KEY_LEN = len(PREFIX) + BODY_LEN + CHECK_LEN
#: How much of a key is shown in listings (prefix + 8 body characters, ~47 of 178 bits).
DISPLAY_LEN = len(PREFIX) + 8

#: Key scopes, and what each lets a key do.
ALL = "all"
INFERENCE = "inference"
AGENT = "agent"
SCOPES = (ALL, INFERENCE, AGENT)

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ALPHABET_SET = frozenset(_ALPHABET)


def _base62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(_ALPHABET[r])
    return "".join(reversed(out))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode("ascii")), CHECK_LEN)


def generate() -> str:
    """A new random key with a valid checksum."""
    body = "".join(secrets.choice(_ALPHABET) for _ in range(BODY_LEN))
    return PREFIX + body + _checksum(body)


def is_well_formed(key: str) -> bool:
    """True when ``key`` has the right prefix, length, alphabet and checksum.

    Pure computation: used to turn away garbage before any store lookup.
    """
    if len(key) != KEY_LEN or not key.startswith(PREFIX):
        return False
    rest = key[len(PREFIX) :]
    if not _ALPHABET_SET.issuperset(rest):
        return False
    body, check = rest[:BODY_LEN], rest[BODY_LEN:]
    return hmac.compare_digest(_checksum(body), check)


def display_prefix(key: str) -> str:
    return key[:DISPLAY_LEN]


def hash_key(pepper: bytes, key: str) -> str:
    """The only form of a key that is stored: hex HMAC-SHA256 under the server's pepper."""
    # hmac.digest: one call into OpenSSL, where hmac.new builds an HMAC object (once per
    # request: every API call's key is hashed to find it in the key cache).
    return hmac.digest(pepper, key.encode("ascii"), "sha256").hex()


def allows(scope: str, needed: str) -> bool:
    """Whether a key of ``scope`` may do what needs ``needed`` (:data:`INFERENCE` or
    :data:`AGENT`)."""
    return scope in (ALL, needed)
