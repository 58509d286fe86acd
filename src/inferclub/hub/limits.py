"""Per-tenant limits kept in memory, off the database: how often a provider may heartbeat,
how many callback addresses the hub checks for one user, how many requests one user may
have in flight, and how many it may begin a second. All are bookkeeping of this hub process
(several processes sharing a store each apply them to what they see)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from inferclub.openai_errors import OpenAIError

#: Heartbeat timestamps older than this many intervals are dropped when the table grows.
_FORGET_AFTER = 4
_PRUNE_AT = 4096

#: Seconds before a request past its user's cap on requests in flight tries again for a
#: place, at least, while the user shares the hub (the ``Retry-After`` of its 429 if it is
#: still full); such requests then come due one at a time at the user's request rate.
REFUSED_AFTER = 1.0


def next_prune(size_after: int) -> int:
    """The table size at which to prune next, given its size after a prune. Twice what was
    left: with more live entries than ``_PRUNE_AT`` (a fleet of 10,000 providers), pruning
    at a fixed size would scan the whole table at every call; doubling makes it amortized
    O(1) and still bounds the table to twice its live part."""
    return max(_PRUNE_AT, 2 * size_after)


class HeartbeatPacer:
    """At most one accepted heartbeat per ``interval`` seconds per provider (user, name).
    Goodbyes have a pacer of their own (``what="Goodbyes"``): one follows a beat at once."""

    def __init__(
        self,
        interval: float,
        what: str = "Heartbeats",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.what = what
        self._clock = clock
        self._last: dict[tuple[int, str], float] = {}
        self._prune_at = _PRUNE_AT

    def check(self, user_id: int, name: str) -> None:
        """Raise a 429 with ``Retry-After`` if this provider beat less than ``interval`` ago."""
        if self.interval <= 0:
            return
        last = self._last.get((user_id, name))
        wait = 0.0 if last is None else last + self.interval - self._clock()
        if wait > 0:
            raise OpenAIError(
                429,
                f"{self.what} of provider {name!r} come faster than one per "
                f"{self.interval:g} s; retry after the interval.",
                "rate_limit_error",
                "rate_limit_exceeded",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )

    def __len__(self) -> int:
        """How many providers' last beats are remembered."""
        return len(self._last)

    def accepted(self, user_id: int, name: str) -> None:
        now = self._clock()
        if len(self._last) >= self._prune_at:
            horizon = now - _FORGET_AFTER * max(self.interval, 1.0)
            self._last = {k: t for k, t in self._last.items() if t > horizon}
            self._prune_at = next_prune(len(self._last))
        self._last[(user_id, name)] = now


def probe_target(callback_url: str) -> str:
    """The address a reachability check connects to, ``host:port``: what a port scan varies
    (the path does not matter to it)."""
    parts = urlsplit(callback_url)
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    return f"{(parts.hostname or '').lower()}:{port}"


class ProbeBudget:
    """At most ``limit`` distinct probe targets per user within ``window`` seconds.

    The hub checks a provider's callback URL when it is new or changed. Without a bound, a
    tenant rotating the URLs of its providers makes the hub connect to dozens of host:ports
    a second of the tenant's choosing. A target already checked within the window may be
    checked again for free (several providers of one user behind one address).
    """

    def __init__(
        self, limit: int, window: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        #: Per user: target -> when it was first checked in the window, oldest first.
        self._targets: dict[int, dict[str, float]] = {}
        self._prune_at = _PRUNE_AT

    def allow(self, user_id: int, target: str) -> bool:
        """Whether the hub may connect to ``target`` for this user now (and count it)."""
        if self.limit <= 0:
            return True
        now = self._clock()
        if len(self._targets) >= self._prune_at:
            self._prune(now)
            self._prune_at = next_prune(len(self._targets))
        seen = self._targets.setdefault(user_id, {})
        self._forget_old(seen, now)
        if target in seen:
            return True
        if len(seen) >= self.limit:
            return False
        seen[target] = now
        return True

    def _forget_old(self, seen: dict[str, float], now: float) -> None:
        horizon = now - self.window
        while seen and next(iter(seen.values())) <= horizon:
            del seen[next(iter(seen))]

    def _prune(self, now: float) -> None:
        for user_id, seen in list(self._targets.items()):
            self._forget_old(seen, now)
            if not seen:
                del self._targets[user_id]


class ConcurrencyLimit:
    """At most ``limit`` proxied requests in flight per user."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._inflight: dict[int, int] = {}

    @contextmanager
    def slot(self, user_id: int) -> Iterator[None]:
        """Hold one of the user's slots for the block, or raise a 429 with ``Retry-After``."""
        self.take(user_id)
        try:
            yield
        finally:
            self.give_back(user_id)

    def take(self, user_id: int) -> None:
        """Hold one of the user's slots until :meth:`give_back`, or raise a 429: :meth:`slot`
        without a generator, for the proxy's path taken by every request."""
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

    def give_back(self, user_id: int) -> None:
        left = self._inflight[user_id] - 1
        if left:
            self._inflight[user_id] = left
        else:
            del self._inflight[user_id]


class RequestRate:
    """At most ``rate`` inference requests a second begin per user, in bursts of up to
    ``burst`` at once: a request beyond that *waits* for its slot instead of being refused.

    A refusal would not bound the hub's CPU: a 429 costs the hub a fair part of what a tiny
    request does, and a client that ignores ``Retry-After`` asks again at once. A request
    that waits costs nothing meanwhile, and the user's concurrency limit bounds how many wait
    (each holds one of its slots; one that leaves gives its slot back), so a request waits at
    most that limit's worth of slots, and a tenant's requests can keep no more of the hub's
    CPU busy than ``rate`` of them a second take. The proxy asks for a slot only while users
    share the hub (:meth:`inferclub.hub.fairness.Turns.shared`): a user alone is never paced.

    The schedule is GCRA's (the generic cell rate algorithm): per user, the time at which its
    next request would be on schedule; a request takes the later of that time less the
    burst's allowance and now, and moves the user's time on by ``1 / rate``.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        not_before: float = 0.0,
    ) -> None:
        self.rate = rate
        self._step = 1.0 / rate if rate > 0 else 0.0
        self._allowance = max(0, burst - 1) * self._step
        #: Seconds every request waits at least (the schedule begins that far ahead, so the
        #: first requests of a flood do not all come due at that same instant).
        self._not_before = not_before
        self._clock = clock
        #: user id -> when its next request is on schedule; a time in the past is the same
        #: as no entry, and such entries are dropped when the table grows.
        self._due: dict[int, float] = {}
        self._prune_at = _PRUNE_AT
        #: Requests that had to wait for their slot, since the process started.
        self.paced = 0

    def wait(self, user_id: int) -> float:
        """Seconds this user's request must wait before it begins (0 if none). Its slot is
        taken: a request that leaves before it gives it back (:meth:`give_back`)."""
        if self.rate <= 0:
            return self._not_before
        now = self._clock()
        if len(self._due) >= self._prune_at:
            self._due = {u: t for u, t in self._due.items() if t > now}
            self._prune_at = next_prune(len(self._due))
        first = now + self._not_before
        due = max(self._due.get(user_id, first), first)
        self._due[user_id] = due + self._step
        wait = due - self._allowance - now
        if wait <= 0:
            return 0.0
        self.paced += 1
        return wait

    def give_back(self, user_id: int) -> None:
        """A request that :meth:`wait` made wait left before its slot: the slot is free
        again (requests that left would otherwise push their user's schedule on and on)."""
        due = self._due.get(user_id)
        if due is not None:
            self._due[user_id] = due - self._step
