"""Key authentication with an in-memory cache, off the database on the hot path.

Positive and negative lookups are cached. A background task polls the store's
``keys_version`` (one tiny query every ``key_cache_refresh`` seconds, 0.5 s by default) and
drops the whole cache when it changes, so a key revoked anywhere (dashboard, CLI, another hub
instance) stops working within a second. ``last_used`` times are collected here and written
in batches.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections import OrderedDict

from inferclub.hub import background, keys
from inferclub.hub.store import KeyOwner, Store

log = logging.getLogger(__name__)

_NEGATIVE_CACHE_MAX = 10_000


class KeyCache:
    def __init__(self, store: Store, pepper: bytes, refresh_interval: float = 0.5) -> None:
        self._store = store
        self._pepper = pepper
        self._refresh_interval = refresh_interval
        #: The cache's own keyed hash of a key names it here: BLAKE2b, 0.8 µs where the stored
        #: form (HMAC-SHA256 through OpenSSL 3) takes 7 µs, and only a miss needs that one.
        #: Its key is this process's, so the names match nothing stored anywhere.
        self._lookup_key = os.urandom(32)
        self._owners: dict[bytes, KeyOwner] = {}
        self._unknown: OrderedDict[bytes, None] = OrderedDict()
        self._version: int | None = None
        self._last_used: dict[int, float] = {}
        #: bumped by every invalidation, so a lookup that straddles one is not cached
        self._generation = 0
        self._task: asyncio.Task[None] | None = None
        self.last_used_failures = background.StoreFailures("key last-used times")

    async def start(self) -> None:
        self._version = await self._store.keys_version()
        self._task = asyncio.create_task(self._watch(), name="key-cache-watch")

    async def stop(self) -> None:
        await background.cancel(self._task)
        self._task = None
        if not await self._flush_quietly():
            log.error("could not write %d keys' last-used times", len(self._last_used))

    async def authenticate(self, token: str) -> KeyOwner | None:
        """The owner of ``token``, or None. Malformed keys never reach the store."""
        if len(token) != keys.KEY_LEN or not token.isascii():
            return None  # before the hash: a header of 8 KB is not hashed, nor Latin-1 text
        name = hashlib.blake2b(token.encode(), key=self._lookup_key, digest_size=16).digest()
        owner = self._owners.get(name)
        if owner is None:
            # The checksum only on a miss: a cached owner's key passed it when it was cached
            # (its hash names it), and the check is a Python loop on every request.
            if name in self._unknown or not keys.is_well_formed(token):
                return None
            generation = self._generation
            owner = await self._store.find_active_key(keys.hash_key(self._pepper, token))
            if generation != self._generation:
                # The cache was dropped while we looked: the answer may be stale already.
                return owner
            if owner is None:
                self._unknown[name] = None
                if len(self._unknown) > _NEGATIVE_CACHE_MAX:
                    self._unknown.popitem(last=False)
                return None
            self._owners[name] = owner
        if owner.key_id is not None:
            self._last_used[owner.key_id] = time.time()
        return owner

    def invalidate(self) -> None:
        """Forget every cached answer: called when keys changed (polled version, or a NOTIFY
        from the store that another hub or the CLI changed one)."""
        self._generation += 1
        self._owners.clear()
        self._unknown.clear()

    async def refresh(self) -> None:
        version = await self._store.keys_version()
        if version != self._version:
            self._version = version
            self.invalidate()

    async def flush_last_used(self) -> None:
        if self._last_used:
            batch, self._last_used = self._last_used, {}
            try:
                await self._store.touch_keys(batch)
            except BaseException:
                self._last_used = {**batch, **self._last_used}
                raise

    async def _flush_quietly(self) -> bool:
        """Flush last-used times; a failing store is counted (and logged once), not raised."""
        try:
            await self.flush_last_used()
        except Exception as exc:  # noqa: BLE001 - any store failure; kept for the next flush
            self.last_used_failures.failed(f"{type(exc).__name__}: {exc}")
            return False
        self.last_used_failures.worked()
        return True

    async def _watch(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(self._refresh_interval)
            try:
                await self.refresh()
                ticks += 1
                if ticks % 20 == 0:
                    await self._flush_quietly()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A store outage must not turn valid cached keys into 401s: keep serving
                # from the cache and try again next tick.
                log.exception("key cache refresh failed; keeping the current cache")
