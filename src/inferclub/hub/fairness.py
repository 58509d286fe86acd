"""Request starts of different users take turns on the hub's event loop.

A hub process runs every request on one event loop. When one user starts many requests at
once (a tenant's 64 streams starting together), their starts sit in the loop's ready queue in
arrival order, and another user's request that arrives just after waits behind all of them.
:class:`Turns` makes each request wait for its turn before the costly part of its start
(decoding the body, choosing, signing, connecting; a heartbeat's validation): each pass of
the loop lets every waiting user start its share of requests, and the loop polls its sockets
between two passes. A burst of one user is then spread over passes, and a request of another
user that arrives meanwhile starts on the next pass, not after the whole burst. Nothing is
held once granted: a request waiting for its agent holds no turn.

The share is one start a pass while requests of different users have asked for their turn
one after the other in the last :data:`MIXED_FOR` seconds: users competing for the loop get
short passes, so that a light user's request, which needs several rounds of the loop, waits
for few starts of a heavy one in each. Once one user alone has asked for that long, the share
is a few (:data:`STARTS_PER_PASS`, with no more than :data:`BYTES_PER_PASS` of body; one start
always): each pass is a round of the loop, and with one start a pass 50 requests at once of
one user cost the hub twice the CPU per request (the loop went round once per request instead
of handling what became ready meanwhile in one batch). Another user's request arriving then
starts at once, but runs in rounds of the loop that already hold a pass of the burst and its
answers (when the burst keeps the CPU busy, several times the delay one start a pass gives);
from its arrival on, the share is one start again.

A start whose user has nothing waiting and has not used up its share of the next pass goes
at once, as one of its user's starts of that pass, so the rotation is the same without a
future and a pass of the loop to wait for; most requests of a hub take this way.

Turns are taken only between users: while one user alone has started requests (or sent
heartbeats) for :data:`SHARED_FOR` seconds, the home hub's case, their starts go at once.
Another user's start turns the rotation on again, at once and for the next :data:`SHARED_FOR`
seconds; a burst that had begun before it goes on in turns from there.

Turns alone cannot help a light user against a tenant that keeps the loop's CPU busy with
many tiny requests: each start of the tenant is cheap to let through, but every round of the
loop then holds the rest of the tenant's requests in flight, and a light request needs several
rounds (measured: a victim's p50 went from 1.2 to 7-9 ms against 64 tiny chats in flight). So a
proxied request *holds* its start (:meth:`Turns.hold`) until its answer begins (a stream's first
bytes; a whole answer's end), for :data:`HOLD_FOR` seconds at most: a request that waits longer
for its engine costs the loop nothing meanwhile. While at least two users have held starts in
the last :data:`MIXED_FOR` seconds (heartbeats hold none) and the loop's thread has been busy
(its CPU time over a :data:`BUSY_WINDOW` at least :data:`BUSY_ABOVE` of it, until it falls
below :data:`CALM_BELOW`), a user may hold at most one more start than the competing user who
held the fewest when the window began. A light user with one request at a time keeps its pace;
a heavy one starts its next request as its last one is answered. A heartbeat queued behind its
user's held-back requests does not wait for them.

Not counted: what a request costs after its start (a long stream's chunks), and a burst of
starts already queued goes on a few a pass once no other user's start has come for
:data:`MIXED_FOR` seconds.

Sharing the loop fairly is not keeping it responsive: a tenant that keeps it saturated with
tiny requests still makes every round long, and a light request needs several rounds (12-26 ms
at p99 against 4-7 quiet, measured). What keeps a tenant from saturating it is the per-user
request rate (:class:`inferclub.hub.limits.RequestRate`), checked before a request asks for
its turn here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable

#: Seconds after a start of another user during which starts take turns: three heartbeat
#: intervals, so another user with an agent online (a heartbeat every 30 s) keeps them on.
SHARED_FOR = 90.0

#: Seconds after starts of two different users followed each other during which the share
#: of a pass is one start. A light user who sends again within it finds short passes; one
#: whose requests are further apart arrives in passes of a busy user's share (measured: a
#: request every 0.2-0.5 s against 64 tiny requests in flight saturating the hub, 7.4 ms p50
#: with 1 s here, 25 ms with 0.1 s, 9.7 ms with one start a pass always).
MIXED_FOR = 1.0

#: The most starts of one user in one pass of the loop, while one user alone has been starting.
STARTS_PER_PASS = 8

#: The most body bytes of one user's starts in one pass then (a start's cost grows with its
#: body: a heartbeat with a thousand long model ids takes a pass of its own); a larger start
#: still gets its turn, alone.
BYTES_PER_PASS = 16 * 1024

#: Seconds of the loop's time over which its thread's CPU time is measured.
BUSY_WINDOW = 0.1

#: The share of a window the loop's thread spends on the CPU from which users who compete
#: are held to their count of starts, and the share below which they no longer are.
BUSY_ABOVE = 0.6
CALM_BELOW = 0.3

#: Seconds after which a start no longer counts as held though its answer has not begun: it
#: waits for its engine (a model's first token, a whole answer), and waiting costs no CPU.
HOLD_FOR = 0.01


class Turns:
    """Round-robin admission of request starts, a few per waiting user per pass, in memory."""

    def __init__(
        self, cpu_clock: Callable[[], float] = time.thread_time, shared_for: float = SHARED_FOR
    ) -> None:
        #: Seconds after another user's start during which users share the hub (at least
        #: the hub's online window: a user with a provider online shares it).
        self._shared_for = shared_for
        #: user id -> its waiters (their body sizes, whether they hold their start) in arrival
        #: order; the dict's order is the rotation.
        self._queues: dict[int, deque[tuple[asyncio.Future[float], int, bool]]] = {}
        self._scheduled = False
        #: Users who started at once since the last pass: their starts and body bytes, which
        #: count against their share of the next pass.
        self._used: dict[int, tuple[int, int]] = {}
        #: The user of the latest start, the loop time until which starts take turns, and
        #: the loop time until which the share of a pass is one start.
        self._last_user: int | None = None
        self._shared_until = -1.0
        self._mixed_until = -1.0
        #: Per user, the loop times of the starts it holds (:meth:`hold` until
        #: :meth:`release`), oldest first; those older than :data:`HOLD_FOR` are dropped as
        #: they are counted.
        self._held: dict[int, deque[float]] = {}
        #: Per user, when it last began to hold a start: users who did within
        #: :data:`MIXED_FOR` compete, also while they hold none.
        self._held_at: dict[int, float] = {}
        #: The loop thread's CPU clock, the window's start (loop time, CPU time), whether
        #: the loop was busy, and the fewest starts a competing user held at the window's
        #: start (see the module's docstring).
        self._cpu_clock = cpu_clock
        self._window: tuple[float, float] | None = None
        self._busy = False
        self._fewest = 0
        #: At least two users held a start within MIXED_FOR (heartbeats hold none).
        self._competing = False
        #: A pass due when a user's oldest held start stops counting.
        self._timer: asyncio.TimerHandle | None = None

    def shared(self) -> bool:
        """Whether users share the hub now: a start (request or heartbeat) of another user
        than the latest one came within :data:`SHARED_FOR` seconds (or the hub's online window,
        if longer: another user with a provider online heartbeats within it)."""
        return asyncio.get_running_loop().time() < self._shared_until

    def waiting(self) -> int:
        """Starts waiting for their turn now, of all users."""
        return sum(len(q) for q in self._queues.values())

    def holding(self) -> int:
        """Starts held and not given back, of all users (those older than
        :data:`HOLD_FOR` until they are next counted)."""
        return sum(len(h) for h in self._held.values())

    async def turn(self, user_id: int, size: int = 0) -> None:
        """Return when it is this user's turn to start a request with a ``size``-byte body
        that is over at once (a heartbeat)."""
        await self._turn(user_id, size, False)

    async def hold(self, user_id: int, size: int = 0) -> float:
        """Return when it is this user's turn to start a request with a ``size``-byte body,
        held until its answer begins: the ticket to give :meth:`release` then, exactly once
        (also when the request fails)."""
        return await self._turn(user_id, size, True)

    def release(self, user_id: int, ticket: float) -> None:
        """The start :meth:`hold` gave ``ticket`` for is over."""
        held = self._held.get(user_id)
        if held:
            with contextlib.suppress(ValueError):  # it was older than HOLD_FOR: not counted
                held.remove(ticket)
        if self._queues:
            # A user held at its count may start again, and a pass is what lets it.
            self._schedule(asyncio.get_running_loop())

    async def _turn(self, user_id: int, size: int, hold: bool) -> float:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if hold:
            self._held_at[user_id] = now
        if user_id != self._last_user:
            if self._last_user is not None:
                self._shared_until = now + self._shared_for
                self._mixed_until = now + MIXED_FOR
            self._last_user = user_id
        elif not self._scheduled and now >= self._shared_until:
            # One user alone: nobody to take turns with, and no pass is due.
            return self._hold(user_id, now) if hold else 0.0
        if user_id not in self._queues and not (hold and self._at_cap(user_id, now)):
            starts, size_used = self._used.get(user_id, (0, 0))
            if starts == 0 or (starts < self._share(now) and size_used + size <= BYTES_PER_PASS):
                # Nothing of this user waits and its share of the next pass is not used up:
                # start now, as one of its starts of that pass.
                self._used[user_id] = (starts + 1, size_used + size)
                self._schedule(loop)
                return self._hold(user_id, now) if hold else 0.0
        waiter: asyncio.Future[float] = loop.create_future()
        self._queues.setdefault(user_id, deque()).append((waiter, size, hold))
        self._schedule(loop)
        try:
            return await waiter
        except asyncio.CancelledError:
            if hold and waiter.done() and not waiter.cancelled():
                # Its turn came, and its client left before it began.
                self.release(user_id, waiter.result())
            raise

    def _hold(self, user_id: int, now: float) -> float:
        held = self._held.get(user_id)
        if held is None:
            held = self._held[user_id] = deque()
        held.append(now)
        return now

    def _held_now(self, user_id: int, now: float) -> int:
        """How many starts this user holds that began less than :data:`HOLD_FOR` ago."""
        held = self._held.get(user_id)
        if not held:
            return 0
        horizon = now - HOLD_FOR
        while held and held[0] <= horizon:
            held.popleft()
        return len(held)

    def _at_cap(self, user_id: int, now: float) -> bool:
        """Whether this user may not begin to hold another start now: while users compete
        and the loop is busy, a user holds at most one more than the competing user who held
        the fewest at the window's start."""
        if now >= self._mixed_until or not self._loop_busy(now) or not self._competing:
            return False
        return self._held_now(user_id, now) > self._fewest

    def _loop_busy(self, now: float) -> bool:
        """Whether the loop's thread has been busy, measured over windows of
        :data:`BUSY_WINDOW` seconds (with hysteresis between the two thresholds). At each
        window, the users who compete are counted again (once a window, not per start: a
        public hub has many)."""
        if self._window is None:
            self._window = (now, self._cpu_clock())
        since, cpu_then = self._window
        if now - since >= BUSY_WINDOW:
            cpu = self._cpu_clock()
            share = (cpu - cpu_then) / (now - since)
            self._busy = share >= (CALM_BELOW if self._busy else BUSY_ABOVE)
            self._window = (now, cpu)
            horizon = now - MIXED_FOR
            for user_id, at in list(self._held_at.items()):
                if at < horizon and not self._held_now(user_id, now):
                    # Held nothing lately and holds nothing now: no longer competing.
                    del self._held_at[user_id]
                    self._held.pop(user_id, None)
            self._fewest = min((self._held_now(u, now) for u in self._held_at), default=0)
            self._competing = len(self._held_at) > 1
        return self._busy

    def _share(self, now: float) -> int:
        """The most starts of one user in a pass now."""
        return 1 if now < self._mixed_until else STARTS_PER_PASS

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._pass)

    def _pass(self) -> None:
        """Wake the first live waiters of every waiting user, their share each, in rotation
        order; a user with more goes to the back. The next pass is scheduled after these
        starts have run (the loop runs ready callbacks in order), with a poll of the sockets
        in between."""
        self._scheduled = False
        used, self._used = self._used, {}
        loop = asyncio.get_running_loop()
        now = loop.time()
        share = self._share(now)
        more = False  # a user stopped by its share of this pass
        wake = None  # the earliest time a user stopped by its count of held starts may go on
        for user_id in list(self._queues):
            queue = self._queues.pop(user_id)
            starts, size_used = used.get(user_id, (0, 0))
            while queue:
                waiter, size, hold = queue[0]
                if waiter.done():  # a cancelled waiter's client left: skip it
                    queue.popleft()
                    continue
                if starts >= share or (starts and size_used + size > BYTES_PER_PASS):
                    more = True
                    break
                if hold and self._at_cap(user_id, now):
                    # Its release(), or its oldest held start's age, lets it go on. A
                    # heartbeat behind it does not wait for that.
                    oldest = self._held[user_id][0] + HOLD_FOR
                    wake = oldest if wake is None else min(wake, oldest)
                    _let_a_heartbeat_through(queue)
                    break
                queue.popleft()
                waiter.set_result(self._hold(user_id, now) if hold else 0.0)
                starts, size_used = starts + 1, size_used + size
            if queue:
                self._queues[user_id] = queue
        if more:
            self._schedule(loop)
        elif wake is not None and (self._timer is None or self._timer.when() > wake):
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(wake, self._timed_pass)

    def _timed_pass(self) -> None:
        self._timer = None
        self._schedule(asyncio.get_running_loop())


def _let_a_heartbeat_through(queue: deque[tuple[asyncio.Future[float], int, bool]]) -> None:
    """Start the first live waiter that holds no start (a heartbeat) in a user's queue whose
    head is held back."""
    beat = next((w for w in queue if not w[2] and not w[0].done()), None)
    if beat is not None:
        queue.remove(beat)
        beat[0].set_result(0.0)
