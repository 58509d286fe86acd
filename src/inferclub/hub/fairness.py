"""Request starts of different users take turns on the hub's event loop.

A hub process runs every request on one event loop. When one user starts many requests at
once (a tenant's 64 streams starting together), their starts sit in the loop's ready queue in
arrival order, and another user's request that arrives just after waits behind all of them.
:class:`Turns` makes each request wait for its turn before the costly part of its start
(decoding the body, choosing, signing, connecting; a heartbeat's validation): each pass of
the loop lets every waiting user start one request, and the loop polls its sockets between
two passes. A burst of one user is then spread over passes, and a request of another user
that arrives meanwhile starts on the next pass, not after the whole burst. When nobody
waits and no pass is due, a start goes at once (no pass of the loop to wait for) and counts
as its user's start of the next pass, so the rotation is the same. Nothing is held once
granted: a request waiting for its agent holds no turn.

Turns are taken only between users: while one user alone has started requests (or sent
heartbeats) for :data:`SHARED_FOR` seconds, the home hub's case, their starts go at once, with
no pass of the loop to wait for (the passes cost about 5 % of the CPU of a small request at
concurrency 10). Another user's start turns the rotation on again, at once and for the next
:data:`SHARED_FOR` seconds; a burst that had begun before it goes on in turns from there.
"""

from __future__ import annotations

import asyncio
from collections import deque

#: Seconds after a start of another user during which starts take turns: three heartbeat
#: intervals, so another user with an agent online (a heartbeat every 30 s) keeps them on.
SHARED_FOR = 90.0


class Turns:
    """Round-robin admission of request starts, one per waiting user per pass, in memory."""

    def __init__(self) -> None:
        #: user id -> its waiters in arrival order; the dict's order is the rotation.
        self._queues: dict[int, deque[asyncio.Future[None]]] = {}
        self._scheduled = False
        #: Users who started at once since the last pass: the next pass skips them once.
        self._granted: set[int] = set()
        #: The user of the latest start, and the loop time until which starts take turns.
        self._last_user: int | None = None
        self._shared_until = -1.0

    def waiting(self) -> int:
        """Starts waiting for their turn now, of all users."""
        return sum(len(q) for q in self._queues.values())

    async def turn(self, user_id: int) -> None:
        """Return when it is this user's turn to start a request."""
        loop = asyncio.get_running_loop()
        if user_id != self._last_user:
            if self._last_user is not None:
                self._shared_until = loop.time() + SHARED_FOR
            self._last_user = user_id
        elif not self._scheduled and loop.time() >= self._shared_until:
            return  # one user alone: nobody to take turns with, and no pass is due
        if not self._scheduled:
            # Nobody waits (a pass would be due otherwise): start now, as the user's start
            # of the pass scheduled here. Most requests of a hub take this way.
            self._scheduled = True
            self._granted.add(user_id)
            loop.call_soon(self._pass)
            return
        waiter: asyncio.Future[None] = loop.create_future()
        self._queues.setdefault(user_id, deque()).append(waiter)
        await waiter

    def _pass(self) -> None:
        """Wake the first live waiter of every waiting user, in rotation order; a user with
        more goes to the back. The next pass is scheduled after these starts have run (the
        loop runs ready callbacks in order), with a poll of the sockets in between."""
        self._scheduled = False
        granted, self._granted = self._granted, set()
        for user_id in list(self._queues):
            queue = self._queues.pop(user_id)
            while queue and queue[0].done():  # a cancelled waiter's client left: skip it
                queue.popleft()
            if queue and user_id not in granted:
                queue.popleft().set_result(None)
            if queue:
                self._queues[user_id] = queue
        if self._queues:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._pass)
