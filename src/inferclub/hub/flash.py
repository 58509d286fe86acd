"""One-time messages from a dashboard form to the page it redirects to (POST/redirect/GET).

A new API key must be shown once, after a redirect, so that reloading the page (browsers
resubmit a POST's page) never creates a second key. The message waits in the store, not in
memory, so the redirect may land on another worker or hub; it is encrypted with a key derived
from the session's token, which only the browser's cookie holds (the store keeps the session's
hash): a copy of the database cannot read a key waiting there. The redirect URL carries only a
random id, useless without that cookie. A message is taken once and expires in minutes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from inferclub.hub.store import Store

#: The kind of stored token a waiting message is.
FLASH = "flash"
#: Seconds a message waits for its page (the redirect follows at once; a slow line is fine).
TTL = 300.0


def _cipher(session_token: str) -> Fernet:
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"inferclub dashboard flash"
    ).derive(session_token.encode())
    return Fernet(base64.urlsafe_b64encode(key))


def _hash(session_token: str, flash_id: str) -> str:
    return hashlib.sha256(f"{FLASH}:{session_token}:{flash_id}".encode()).hexdigest()


async def put(store: Store, session_token: str, user_id: int, message: dict[str, Any]) -> str:
    """Keep ``message`` for this session's next page; the id to put in the redirect URL."""
    flash_id = secrets.token_urlsafe(16)
    data = _cipher(session_token).encrypt(json.dumps(message).encode()).decode()
    await store.create_auth_token(
        FLASH, _hash(session_token, flash_id), user_id, time.time() + TTL, data
    )
    return flash_id


async def take(store: Store, session_token: str, flash_id: str) -> dict[str, Any] | None:
    """The message, once; None when unknown, expired, already taken or another session's."""
    if not flash_id or len(flash_id) > 64:
        return None
    record = await store.consume_auth_token(FLASH, _hash(session_token, flash_id), time.time())
    if record is None:
        return None
    try:
        message = json.loads(_cipher(session_token).decrypt(record.data.encode()))
    except (InvalidToken, ValueError):
        return None
    return message if isinstance(message, dict) else None
