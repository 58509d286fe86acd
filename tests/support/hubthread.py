"""The in-process hub for synchronous tests: `running_hub` served from its own event loop in a
background thread, with `HubProcess`'s helpers as plain methods.

Tests that drive the hub with blocking clients (a cookie-keeping urllib client, the sync
`openai.OpenAI`) use it where they would otherwise start a hub process; only what needs a
process (the CLI's output, signals) still does.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Coroutine, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from inferclub.hub.store import RequestRecord
from inferclub.testing import LoopThread
from tests.support.hubapp import HubApp, running_hub

T = TypeVar("T")


class HubThread:
    def __init__(self, app: HubApp, thread: LoopThread) -> None:
        self.app = app
        self.url = app.url
        self.api_base = app.api_base
        self._thread = thread

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        async def run() -> T:
            return await coro

        return self._thread.run(run, timeout=30)

    def log(self) -> str:
        return self.app.log()

    def create_user(self, login: str) -> int:
        return self._run(self.app.create_user(login))

    def create_key(self, login: str, name: str = "") -> str:
        return self._run(self.app.create_key(login, name))

    def user_with_key(self, login: str) -> str:
        return self._run(self.app.user_with_key(login))

    def heartbeat(
        self, key: str, name: str, callback_url: str, services: list[dict[str, Any]], **extra: Any
    ) -> tuple[int, dict[str, Any]]:
        return self._run(self.app.heartbeat(key, name, callback_url, services, **extra))

    def add_requests(self, rows: list[RequestRecord]) -> None:
        """History rows, written through the hub's own store (as its history writer does)."""
        self._run(self.app.hub.store.add_requests(rows))

    def query(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        return self.app.query(sql, *args)

    def wait_for_request_rows(self, n: int = 1, timeout: float = 10) -> list[sqlite3.Row]:
        return self._run(self.app.wait_for_request_rows(n, timeout))


@contextmanager
def hub_in_thread(
    workdir: Path, env: Mapping[str, str] | None = None, **settings: Any
) -> Iterator[HubThread]:
    """`running_hub` (same arguments) in a thread of its own, for the length of the block."""
    thread = LoopThread("hub")
    hub = running_hub(workdir, env, **settings)
    try:
        app = thread.run(hub.__aenter__)

        async def stop() -> None:
            await hub.__aexit__(None, None, None)

        try:
            yield HubThread(app, thread)
        finally:
            thread.run(stop, timeout=30)
    finally:
        thread.close()
