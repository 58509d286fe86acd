"""Request history, written in batches by one background task (never on the request path)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from inferclub.hub import background
from inferclub.hub.store import RequestRecord, Store

log = logging.getLogger(__name__)

_MAX_BUFFER = 50_000


class HistoryWriter:
    def __init__(self, store: Store, interval: float = 1.0) -> None:
        self._store = store
        self._interval = interval
        self._rows: list[RequestRecord] = []
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def add(self, row: RequestRecord) -> None:
        self._rows.append(row)
        if len(self._rows) >= 1000:
            self._wake.set()
        if len(self._rows) > _MAX_BUFFER:
            # The store has been failing for a long time; keep memory bounded.
            dropped = len(self._rows) - _MAX_BUFFER
            del self._rows[:dropped]
            log.error("request history buffer full; dropped %d oldest rows", dropped)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="history-writer")

    async def stop(self) -> None:
        await background.cancel(self._task)
        self._task = None
        await self.flush()

    async def flush(self) -> None:
        if not self._rows:
            return
        batch, self._rows = self._rows, []
        try:
            await self._store.add_requests(batch)
        except BaseException as exc:
            # Keep the rows for the next flush (also when cancelled at shutdown: stop()
            # flushes once more). Rows are inserted by id, so a retry never duplicates.
            self._rows[:0] = batch
            if isinstance(exc, Exception):
                log.exception("writing %d history rows failed; will retry", len(batch))
            raise

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - already logged by flush(); retry next round
                await asyncio.sleep(self._interval)
