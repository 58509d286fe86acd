"""Per-tenant limits kept in memory, off the database: how often a provider may heartbeat
and how many requests one user may have in flight. Both are bookkeeping of this hub
process (several processes sharing a store each apply them to what they see)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

from inferclub.openai_errors import OpenAIError

#: Heartbeat timestamps older than this many intervals are dropped when the table grows.
_FORGET_AFTER = 4
_PRUNE_AT = 4096


class HeartbeatPacer:
    """At most one accepted heartbeat per ``interval`` seconds per provider (user, name)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[tuple[int, str], float] = {}

    def check(self, user_id: int, name: str) -> None:
        """Raise a 429 with ``Retry-After`` if this provider beat less than ``interval`` ago."""
        if self.interval <= 0:
            return
        last = self._last.get((user_id, name))
        wait = 0.0 if last is None else last + self.interval - time.monotonic()
        if wait > 0:
            raise OpenAIError(
                429,
                f"Heartbeats of provider {name!r} come faster than one per "
                f"{self.interval:g} s; retry after the interval.",
                "rate_limit_error",
                "rate_limit_exceeded",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )

    def accepted(self, user_id: int, name: str) -> None:
        now = time.monotonic()
        if len(self._last) >= _PRUNE_AT:
            horizon = now - _FORGET_AFTER * max(self.interval, 1.0)
            self._last = {k: t for k, t in self._last.items() if t > horizon}
        self._last[(user_id, name)] = now


class ConcurrencyLimit:
    """At most ``limit`` proxied requests in flight per user."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._inflight: dict[int, int] = {}

    @contextmanager
    def slot(self, user_id: int) -> Iterator[None]:
        """Hold one of the user's slots for the block, or raise a 429 with ``Retry-After``."""
        count = self._inflight.get(user_id, 0)
        if self.limit > 0 and count >= self.limit:
            raise OpenAIError(
                429,
                f"You have {count} requests in flight, the most this hub allows one user; "
                "retry when one of them has finished.",
                "rate_limit_error",
                "rate_limit_exceeded",
                headers={"Retry-After": "1"},
            )
        self._inflight[user_id] = count + 1
        try:
            yield
        finally:
            left = self._inflight[user_id] - 1
            if left:
                self._inflight[user_id] = left
            else:
                del self._inflight[user_id]
