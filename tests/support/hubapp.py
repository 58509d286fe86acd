"""The hub in the test's own event loop: the real application and the real SQLite store in a
temporary directory, behind a Tornado server on 127.0.0.1 port 0. No subprocess.

`running_hub` is what `inferclub serve` does minus the CLI (signals, drain, printed links), so
tests of the `/v1` API and the dashboard pay milliseconds per hub instead of a process start.
The helpers mirror `HubProcess` (users, keys, heartbeats, the store read-only, the hub's log)
as coroutines; clients are the official SDK's `AsyncOpenAI`, in the same loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import logging
import sqlite3
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import openai
import tornado.httpserver
import tornado.netutil

from inferclub.hub import keys
from inferclub.hub.app import Hub, make_app
from inferclub.hub.config import load_or_create_secrets, load_settings
from inferclub.hub.store import SQLiteStore, open_store
from tests.support.hubproc import TEST_ENV, post_json, query_db, request_json
from tests.support.sqlite_template import copy_migrated_database

#: The loggers whose records make up `HubApp.log()`: what a hub process writes to stderr, from
#: the hub and the libraries it runs on (not the test's own clients, such as the SDK's).
HUB_LOGGERS = ("inferclub", "tornado", "aiohttp", "aiosqlite", "asyncio")
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class HubApp:
    """A running in-process hub. ``hub`` is the application object handlers see."""

    def __init__(self, hub: Hub, url: str, lines: list[str]) -> None:
        self.hub = hub
        self.url = url
        self.db = hub.settings.db_path
        self._lines = lines
        self._clients: list[openai.AsyncOpenAI] = []

    @property
    def api_base(self) -> str:
        return self.url + "/v1"

    def client(self, key: str, **kw: Any) -> openai.AsyncOpenAI:
        """An SDK client of its own for this hub, closed when the hub stops."""
        http = openai.DefaultAsyncHttpxClient(verify=_tls_context())
        self._clients.append(
            openai.AsyncOpenAI(
                base_url=self.api_base, api_key=key, max_retries=0, http_client=http, **kw
            )
        )
        return self._clients[-1]

    async def close_clients(self) -> None:
        for c in self._clients:
            await c.close()
        self._clients.clear()

    def log(self) -> str:
        return "\n".join(self._lines)

    # -- users and keys, through the store as the CLI does --
    async def create_user(self, login: str) -> int:
        return (await self.hub.store.create_user(login)).id

    async def create_key(self, login: str, name: str = "", scope: str = keys.ALL) -> str:
        user = await self.hub.store.get_user(login)
        assert user is not None, f"no user {login!r}"
        key = keys.generate()
        digest = keys.hash_key(self.hub.secrets.pepper, key)
        await self.hub.store.create_key(user.id, name, keys.display_prefix(key), digest, scope)
        return key

    async def user_with_key(self, login: str) -> str:
        await self.create_user(login)
        return await self.create_key(login)

    async def revoke_elsewhere(self, key: str) -> None:
        """Revoke ``key`` through a second connection to the database, as the CLI or another
        hub instance would: this hub learns of it only by watching the store."""
        other = SQLiteStore(self.db)
        await other.open()
        try:
            (found,) = [k for k in await other.find_keys(keys.display_prefix(key)) if k.active]
            assert await other.revoke_key(found.id)
        finally:
            await other.close()

    # -- HTTP without the SDK --
    async def heartbeat(
        self, key: str, name: str, callback_url: str, services: list[dict[str, Any]], **extra: Any
    ) -> tuple[int, dict[str, Any]]:
        payload = {
            "name": name,
            "callback_url": callback_url,
            "version": "test",
            "services": services,
            **extra,
        }
        return await self.post_json("/v1/agent/heartbeat", payload, key)

    async def post_json(
        self, path: str, payload: Any, key: str | None, content_type: str = "application/json"
    ) -> tuple[int, dict[str, Any]]:
        """`HubProcess.post_json` from a worker thread, so the hub keeps serving meanwhile."""
        return await asyncio.to_thread(post_json, self.url, path, payload, key, content_type)

    async def get_json(self, path: str, key: str | None) -> tuple[int, dict[str, Any]]:
        return await asyncio.to_thread(request_json, self.url, "GET", path, None, key)

    # -- store, read-only --
    def query(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        return query_db(self.db, sql, *args)

    async def wait_for_request_rows(self, n: int = 1, timeout: float = 10) -> list[sqlite3.Row]:
        """History rows, newest last, once at least ``n`` were written (they are batched)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.query("SELECT * FROM requests ORDER BY started_at")
            if len(rows) >= n or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.02)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The default TLS context, built once per run: loading the CA bundle is most of what an
    SDK client costs to create (a third of a second), and these clients speak plain HTTP."""
    return ssl.create_default_context()


@contextmanager
def _capture_hub_log() -> Iterator[list[str]]:
    """Lines the hub logs at DEBUG and up, formatted as `inferclub serve` writes them."""
    lines: list[str] = []
    handler = _ListHandler(lines)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    loggers = [logging.getLogger(name) for name in HUB_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)


class _ListHandler(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.DEBUG)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@asynccontextmanager
async def running_hub(
    workdir: Path,
    env: Mapping[str, str] | None = None,
    *,
    from_template: bool = True,
    **settings: Any,
) -> AsyncIterator[HubApp]:
    """A hub on ``workdir/hub.db``, serving on 127.0.0.1 port 0 in the running loop.

    Settings come as for a hub process: `TEST_ENV`, then ``env`` (``INFERCLUB_*`` variables),
    then ``settings`` (`Settings` fields: ``max_json_body=2000``, ``online_window=1``).
    Tornado's body-size cap is the one ``inferclub serve`` sets (``max_web_body``; the ``/v1``
    handlers raise it per request).

    A new database starts as a copy of one migrated once per test process (see
    tests/support/sqlite_template.py); ``from_template=False`` has the hub create and migrate
    it itself.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config = load_settings(env={**TEST_ENV, **(env or {})})
    config = dataclasses.replace(config, db=str(workdir / "hub.db"), **settings)
    if from_template:
        copy_migrated_database(config.db_path)
    store = open_store(str(config.db_path))
    with _capture_hub_log() as lines:
        await store.open()
        hub = Hub(config, store, load_or_create_secrets(config.secrets_path))
        await hub.start()
        server = tornado.httpserver.HTTPServer(
            make_app(hub), max_body_size=hub.settings.max_web_body
        )
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        server.add_sockets(sockets)
        app = HubApp(hub, f"http://127.0.0.1:{sockets[0].getsockname()[1]}", lines)
        try:
            yield app
        finally:
            await app.close_clients()
            server.stop()
            await server.close_all_connections()
            await hub.stop()
            await store.close()


async def wait_until(cond: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll ``cond`` (a function, or a coroutine function) without blocking the loop the hub
    runs in; whether it came true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = cond()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)


def request_id_of(err: openai.APIStatusError) -> str:
    """The ``X-Request-Id`` of an error answer: every one has it (``req_`` + 24 hex digits)."""
    rid = err.response.headers.get("X-Request-Id", "")
    assert len(rid) == 28 and rid.startswith("req_"), f"no X-Request-Id on {err.status_code}"
    return rid
