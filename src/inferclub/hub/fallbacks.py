"""Fallback models: per user, what to serve when a model cannot be served now.

``qwen3-32b -> qwen3-8b`` makes a request for ``qwen3-32b`` that no provider can take (none
online, engines down, all cooling down, or no such model any more) go to ``qwen3-8b`` instead;
the answer says so in ``X-InferClub-Served-Model`` and the history row records both. One level
only: a fallback's own fallback is not followed.

The rules the CLI (``inferclub models fallback``) and the dashboard share live here. The hub
keeps every user's fallbacks in memory (nothing on the request path reads the database) and
reloads them with the providers every ``registry_refresh`` seconds, so a change made with the
CLI or on another hub process is seen within that time; a change made on this hub at once.
"""

from __future__ import annotations

import time

from inferclub import wire
from inferclub.hub.store import Fallback, Store

#: Fallbacks one user may set: each is a row and an entry in every hub's memory.
MAX_FALLBACKS = 256


class FallbackError(ValueError):
    """A fallback the rules refuse; the message says why."""


def check(model: str, fallback: str, count: int) -> None:
    """Refuse what cannot be stored: empty or over-long names, a model as its own fallback,
    more than :data:`MAX_FALLBACKS` for one user (``count``: the user's fallbacks now)."""
    for what, name in (("model", model), ("fallback", fallback)):
        if not name or not name.strip():
            raise FallbackError(f"the {what} name is empty")
        if len(name) > wire.MAX_MODEL_ID:
            raise FallbackError(f"the {what} name is longer than {wire.MAX_MODEL_ID} characters")
        if any(ord(c) < 32 for c in name):
            raise FallbackError(f"the {what} name contains control characters")
    if model == fallback:
        raise FallbackError("a model cannot be its own fallback")
    if count >= MAX_FALLBACKS:
        raise FallbackError(f"at most {MAX_FALLBACKS} fallbacks per user")


class Fallbacks:
    """Every user's fallbacks, in memory, written through to the store."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._by_user: dict[int, dict[str, str]] = {}
        #: Bumped by every change made here, so that a reload never undoes one.
        self._changes = 0

    async def load(self) -> None:
        changes = self._changes
        by_user: dict[int, dict[str, str]] = {}
        for f in await self._store.list_fallbacks():
            by_user.setdefault(f.user_id, {})[f.model] = f.fallback
        if changes != self._changes:
            # A change made here while the store was read may be missing from what was read;
            # keep memory as it is (it has the change) and leave the rest to the next reload.
            return
        self._by_user = by_user

    def of(self, user_id: int, model: str) -> str | None:
        """The user's fallback for ``model``, if any. No I/O."""
        mine = self._by_user.get(user_id)
        return mine.get(model) if mine else None

    def listed(self, user_id: int) -> list[tuple[str, str]]:
        """``(model, fallback)`` of the user, by model."""
        return sorted(self._by_user.get(user_id, {}).items())

    async def set(self, user_id: int, model: str, fallback: str) -> None:
        model, fallback = model.strip(), fallback.strip()
        await set_fallback(self._store, user_id, model, fallback)
        self._by_user.setdefault(user_id, {})[model] = fallback
        self._changes += 1

    async def delete(self, user_id: int, model: str) -> bool:
        self._by_user.get(user_id, {}).pop(model, None)
        self._changes += 1
        return await self._store.delete_fallback(user_id, model)


async def set_fallback(store: Store, user_id: int, model: str, fallback: str) -> None:
    """Check and store one fallback (the CLI's way, without a running hub's memory)."""
    mine = [f for f in await store.list_fallbacks(user_id) if f.model != model]
    check(model, fallback, len(mine))
    await store.set_fallback(user_id, model, fallback, time.time())


__all__ = ["MAX_FALLBACKS", "Fallback", "FallbackError", "Fallbacks", "check", "set_fallback"]
