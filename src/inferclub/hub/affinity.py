"""Conversation affinity: a chat's follow-up turns prefer the service that served the last turn.

Engines keep a prompt cache: a follow-up turn sent to the service that answered the previous
one reuses it instead of reading the whole conversation again. A conversation is recognised
by a hash of the user id and its opening messages (every message up to and including the
first user message), which stay the same from turn to turn. Only that 16-byte hash is kept,
never prompt content, in a bounded table (least recently used first out), in memory.
:class:`~inferclub.hub.choose.Fleet` prefers the remembered service among candidates that
are not busier (see its order).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Any

#: Conversations remembered; past this the least recently used is forgotten.
MAX_CONVERSATIONS = 10_000

#: (provider id, service name) of a route.
Served = tuple[int, str]

#: ``json.dumps(..., sort_keys=True)`` builds an encoder per call; one serves every request.
_ENCODER = json.JSONEncoder(sort_keys=True)


def conversation_key(user_id: int, messages: Any) -> bytes | None:
    """The hash that names this chat's conversation, or None when it has no user message."""
    if not isinstance(messages, list):
        return None
    for end, message in enumerate(messages, 1):
        if isinstance(message, dict) and message.get("role") == "user":
            opening = _ENCODER.encode([user_id, messages[:end]])
            return hashlib.blake2b(opening.encode(), digest_size=16).digest()
    return None


class Conversation:
    """A chat's conversation, hashed (:func:`conversation_key`) only when a choice between
    services asks for it: most users have one service per model, and their requests then
    never encode their opening messages. A turn whose key was never asked for is not
    remembered either: a fleet that grows from one service to two loses one turn's preference.

    The decoded messages are held only until the choice is made (:meth:`chosen`): a request
    runs on for as long as its answer streams, and they weigh several times its body."""

    __slots__ = ("_user_id", "_messages", "_key")

    def __init__(self, user_id: int, messages: Any) -> None:
        self._user_id = user_id
        #: None once hashed or let go (a chat without messages has no key either).
        self._messages = messages
        self._key: bytes | None = None

    def key(self) -> bytes | None:
        """The conversation's key (None for a chat without a user message, or asked for only
        after :meth:`chosen`)."""
        if self._messages is not None:
            self._key = conversation_key(self._user_id, self._messages)
            self._messages = None
        return self._key

    def chosen(self) -> None:
        """The request's services are chosen: let its messages go, hashed or not."""
        self._messages = None

    @property
    def asked(self) -> bytes | None:
        """The key, if a choice asked for it; None otherwise."""
        return self._key


class Affinity:
    """Which service served each conversation last, bounded."""

    def __init__(self, size: int = MAX_CONVERSATIONS) -> None:
        self.size = size
        self._last: OrderedDict[bytes, Served] = OrderedDict()

    def __len__(self) -> int:
        return len(self._last)

    def preferred(self, key: bytes | None) -> Served | None:
        if key is None:
            return None
        served = self._last.get(key)
        if served is not None:
            self._last.move_to_end(key)
        return served

    def served(self, key: bytes | None, provider_id: int, service: str) -> None:
        if key is None:
            return
        self._last[key] = (provider_id, service)
        self._last.move_to_end(key)
        while len(self._last) > self.size:
            self._last.popitem(last=False)
