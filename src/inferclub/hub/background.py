"""Small helpers for the hub's background tasks (key-cache watch, history writer, registry,
last-seen writer): stopping them, and counting the store failures they ride out."""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger("inferclub.store")


async def cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has stopped."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class StoreFailures:
    """Counts failed writes of one kind; logs the first of a run and the recovery, not each
    one, so a broken disk under load does not also flood the log."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.total = 0
        self._run = 0

    def failed(self, detail: str) -> None:
        self.total += 1
        self._run += 1
        if self._run == 1:
            log.error("the store refused %s (%s); going on in memory", self.what, detail)

    def worked(self) -> None:
        if self._run:
            log.warning("the store accepts %s again after %d failures", self.what, self._run)
            self._run = 0
