"""Request history, written in batches by one background task (never on the request path).

History never blocks anything: rows go to the store in bounded batches; a row the store refuses
(bad data) is dropped and counted, never retried; while the store itself fails (a full disk) the
rows wait in a bounded buffer, and once it works again the backlog drains batch by batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from inferclub.hub import background
from inferclub.hub.background import StoreFailures
from inferclub.hub.store import RequestRecord, Store, refuses_rows

log = logging.getLogger(__name__)

_MAX_BUFFER = 50_000
#: Rows per transaction: small enough that one batch never holds the writer for long.
BATCH = 1000


class HistoryWriter:
    def __init__(self, store: Store, interval: float = 1.0) -> None:
        self._store = store
        self._interval = interval
        self._rows: list[RequestRecord] = []
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.failures = StoreFailures("request history")
        #: rows the store refused (bad data) plus rows dropped from a full buffer
        self.dropped = 0

    @property
    def pending(self) -> int:
        return len(self._rows)

    def add(self, row: RequestRecord) -> None:
        self._rows.append(row)
        if len(self._rows) >= BATCH:
            self._wake.set()
        if len(self._rows) > _MAX_BUFFER:
            # The store has been failing for a long time; keep memory bounded.
            dropped = len(self._rows) - _MAX_BUFFER
            del self._rows[:dropped]
            self.dropped += dropped
            log.error("request history buffer full; dropped %d oldest rows", dropped)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="history-writer")

    async def stop(self) -> None:
        """Write what is buffered, once; what the store cannot take is logged, never raised."""
        await background.cancel(self._task)
        self._task = None
        await self.flush()
        if self._rows or self.dropped:
            log.error(
                "could not write %d request history rows (%d dropped earlier)",
                len(self._rows),
                self.dropped,
            )

    async def flush(self) -> bool:
        """Write buffered rows batch by batch; False when the store failed (rows kept)."""
        while self._rows:
            batch = self._rows[:BATCH]
            del self._rows[: len(batch)]
            try:
                left = await self._write(batch)
            except BaseException:
                # Cancelled at shutdown: stop() flushes once more. Rows are inserted by id,
                # so writing a row twice never duplicates it.
                self._rows[:0] = batch
                raise
            if left:
                self._rows[:0] = left
                return False
        return True

    async def _write(self, batch: list[RequestRecord]) -> list[RequestRecord]:
        """Write ``batch``, dropping the rows the store refuses; the rows left unwritten
        because the store itself failed."""
        try:
            await self._store.add_requests(batch)
        except Exception as exc:  # noqa: BLE001 - any store failure; sorted out below
            if not refuses_rows(exc):
                self.failures.failed(f"{type(exc).__name__}: {exc}")
                return batch
            if len(batch) == 1:
                self.dropped += 1
                log.error("the store refused history row %s (%s); dropped", batch[0].id, exc)
                return []
            # Halve until the refused rows are alone, so the others are written.
            half = len(batch) // 2
            left = await self._write(batch[:half])
            return left + batch[half:] if left else await self._write(batch[half:])
        self.failures.worked()
        return []

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            if not await self.flush():
                await asyncio.sleep(self._interval)  # the store fails: don't hammer it


class Retention:
    """Deletes history rows older than ``days`` in the background, one bounded batch per
    transaction, so the writer and the dashboard never wait long behind it."""

    BATCH = 1000
    #: Seconds between rounds; the first round runs soon after start.
    INTERVAL = 600.0

    def __init__(self, store: Store, days: float) -> None:
        self._store = store
        self._days = days
        self._task: asyncio.Task[None] | None = None
        self.failures = StoreFailures("history pruning")

    async def start(self) -> None:
        if self._days > 0:
            self._task = asyncio.create_task(self._loop(), name="history-retention")

    async def stop(self) -> None:
        await background.cancel(self._task)
        self._task = None

    async def prune(self, now: float) -> int:
        """One round: every row past retention, batch by batch; how many were deleted."""
        before = now - self._days * 86400
        total = 0
        while True:
            try:
                deleted = await self._store.prune_requests(before, self.BATCH)
            except Exception as exc:  # noqa: BLE001 - any store failure; next round retries
                self.failures.failed(f"{type(exc).__name__}: {exc}")
                return total
            self.failures.worked()
            total += deleted
            if deleted < self.BATCH:
                return total
            await asyncio.sleep(0.05)  # let the writer in between batches

    async def _loop(self) -> None:
        await asyncio.sleep(5)
        while True:
            deleted = await self.prune(time.time())
            if deleted:
                log.info("deleted %d request history rows older than %g days", deleted, self._days)
            await asyncio.sleep(self.INTERVAL)
