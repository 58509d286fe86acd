"""LISTEN on a dedicated PostgreSQL connection, reconnecting when it drops.

Not a pooled connection: LISTEN belongs to a session, and the pool resets a connection
(``UNLISTEN *``) when it is released.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import asyncpg

from inferclub.hub.store.base import ChangeCallback, StoreError

log = logging.getLogger(__name__)

#: What a failed connect or ping raises (a refused socket, a server that went away).
CONNECTION_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class Listener:
    """Delivers NOTIFY payloads of ``channels`` to callbacks.

    A dropped connection is noticed at once when the server closes it, or within
    ``ping_interval`` when the network just goes quiet; the listener then reconnects every
    ``retry_delay`` seconds and, once back, calls each callback with an empty payload per
    channel, because whatever was notified meanwhile was lost.
    """

    def __init__(
        self,
        dsn: str,
        channels: Sequence[str],
        *,
        name: str = "",
        ping_interval: float = 5.0,
        retry_delay: float = 1.0,
    ) -> None:
        self._dsn = dsn
        self._channels = tuple(channels)
        self._name = name or "database"
        self._ping_interval = ping_interval
        self._retry_delay = retry_delay
        self._callbacks: list[ChangeCallback] = []
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None

    async def add(self, on_change: ChangeCallback) -> None:
        """Register ``on_change``; returns once the connection listens (raises StoreError
        when the first connection cannot be made)."""
        self._callbacks.append(on_change)
        if self._ready is None:
            self._ready = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._run(self._ready))
        try:
            await asyncio.shield(self._ready)
        except StoreError:
            self._callbacks.remove(on_change)
            self._ready = self._task = None
            raise

    async def close(self) -> None:
        task, self._task, self._ready = self._task, None, None
        self._callbacks.clear()
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self, ready: asyncio.Future[None]) -> None:
        while True:
            try:
                conn = await self._connect()
            except CONNECTION_ERRORS as exc:
                if not ready.done():
                    ready.set_exception(
                        StoreError(f"{self._name}: cannot listen for changes: {exc}")
                    )
                    return
                log.warning("change listener: cannot reconnect (%s); retrying", exc)
                await asyncio.sleep(self._retry_delay)
                continue
            try:
                if ready.done():
                    log.info("change listener: reconnected; reloading everything once")
                    for channel in self._channels:
                        self._deliver(channel, "")
                else:
                    ready.set_result(None)
                await self._watch(conn)
            finally:
                conn.terminate()
            log.warning("change listener: connection lost; reconnecting")

    async def _connect(self) -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(
            self._dsn,
            timeout=10,
            server_settings={"application_name": "inferclub-listener"},
        )
        try:
            for channel in self._channels:
                await conn.add_listener(channel, self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def _watch(self, conn: asyncpg.Connection) -> None:
        """Return when ``conn`` is gone: closed by the server, or not answering a ping."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        while not conn.is_closed():
            try:
                await asyncio.wait_for(lost.wait(), self._ping_interval)
                return
            except TimeoutError:
                pass
            try:
                await asyncio.wait_for(conn.execute("SELECT 1"), self._ping_interval)
            except CONNECTION_ERRORS:
                return

    def _on_notify(
        self,
        _conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
        _pid: int,
        channel: str,
        payload: object,
    ) -> None:
        self._deliver(channel, str(payload))

    def _deliver(self, channel: str, payload: str) -> None:
        for callback in list(self._callbacks):
            try:
                callback(channel, payload)
            except Exception:
                # One broken subscriber must not stop the others or the listener.
                log.exception("change callback failed for %s", channel)
