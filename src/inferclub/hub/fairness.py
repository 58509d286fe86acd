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
"""

from __future__ import annotations

import asyncio
from collections import deque

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


class Turns:
    """Round-robin admission of request starts, a few per waiting user per pass, in memory."""

    def __init__(self) -> None:
        #: user id -> its waiters (and their body sizes) in arrival order; the dict's order
        #: is the rotation.
        self._queues: dict[int, deque[tuple[asyncio.Future[None], int]]] = {}
        self._scheduled = False
        #: Users who started at once since the last pass: their starts and body bytes, which
        #: count against their share of the next pass.
        self._used: dict[int, tuple[int, int]] = {}
        #: The user of the latest start, the loop time until which starts take turns, and
        #: the loop time until which the share of a pass is one start.
        self._last_user: int | None = None
        self._shared_until = -1.0
        self._mixed_until = -1.0

    def waiting(self) -> int:
        """Starts waiting for their turn now, of all users."""
        return sum(len(q) for q in self._queues.values())

    async def turn(self, user_id: int, size: int = 0) -> None:
        """Return when it is this user's turn to start a request with a ``size``-byte body."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if user_id != self._last_user:
            if self._last_user is not None:
                self._shared_until = now + SHARED_FOR
                self._mixed_until = now + MIXED_FOR
            self._last_user = user_id
        elif not self._scheduled and now >= self._shared_until:
            return  # one user alone: nobody to take turns with, and no pass is due
        if user_id not in self._queues:
            starts, size_used = self._used.get(user_id, (0, 0))
            if starts == 0 or (starts < self._share(now) and size_used + size <= BYTES_PER_PASS):
                # Nothing of this user waits and its share of the next pass is not used up:
                # start now, as one of its starts of that pass.
                self._used[user_id] = (starts + 1, size_used + size)
                self._schedule(loop)
                return
        waiter: asyncio.Future[None] = loop.create_future()
        self._queues.setdefault(user_id, deque()).append((waiter, size))
        self._schedule(loop)
        await waiter

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
        share = self._share(loop.time())
        for user_id in list(self._queues):
            queue = self._queues.pop(user_id)
            starts, size_used = used.get(user_id, (0, 0))
            while queue:
                waiter, size = queue[0]
                if waiter.done():  # a cancelled waiter's client left: skip it
                    queue.popleft()
                    continue
                if starts >= share or (starts and size_used + size > BYTES_PER_PASS):
                    break
                queue.popleft()
                waiter.set_result(None)
                starts, size_used = starts + 1, size_used + size
            if queue:
                self._queues[user_id] = queue
        if self._queues:
            self._schedule(loop)
