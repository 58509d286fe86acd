"""A PostgreSQL schema of its own for a test, on the server named by ``INFERCLUB_TEST_PG_DSN``.

Without a server the test is skipped with the reason shown; with
``INFERCLUB_REQUIRE_POSTGRES=1`` (CI) it fails instead, so a missing server can't pass unseen.

The schemas live in a database of the test process's own, made on first use and dropped when
the session ends (`drop_own_database`, from tests/conftest.py): NOTIFY channels and
``pg_stat_activity`` are per database, not per schema, so tests running at the same time in
other processes (pytest-xdist workers, another checkout's run) would otherwise hear this
process's change notifications and see its listener connections. Where the server's user may
not create databases, the schemas go into the DSN's database, shared as before.
"""

from __future__ import annotations

import asyncio
import functools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

from inferclub.hub.store.pglisten import CONNECTION_ERRORS
from inferclub.hub.store.pgschema import redact_dsn

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def server_dsn() -> str:
    return os.environ.get("INFERCLUB_TEST_PG_DSN") or DEFAULT_DSN


def with_search_path(dsn: str, schema: str) -> str:
    """``dsn`` whose connections use ``schema`` (asyncpg passes unknown query parameters on
    as server settings)."""
    parts = urlsplit(dsn)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "search_path"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("search_path", schema)])))


def with_database(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("INFERCLUB_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{reason} (INFERCLUB_REQUIRE_POSTGRES=1)")
    pytest.skip(reason)


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@functools.cache
def own_database() -> str:
    """The DSN of this process's own database, created on the first call (see above)."""
    name = f"inferclub_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        # template0: nobody is ever connected to it, so processes may copy it at once.
        asyncio.run(_execute(server_dsn(), f'CREATE DATABASE "{name}" TEMPLATE template0'))
    except asyncpg.InsufficientPrivilegeError:
        return server_dsn()
    return with_database(server_dsn(), name)


def drop_own_database() -> None:
    """Drop the database `own_database` made, if it made one (at the end of the session)."""
    if own_database.cache_info().currsize == 0 or own_database() == server_dsn():
        return
    name = urlsplit(own_database()).path.lstrip("/")
    # FORCE: a hub process a failed test left behind must not keep the database alive.
    asyncio.run(_execute(server_dsn(), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def admin(sql: str, *args: object) -> list[asyncpg.Record]:
    """Run ``sql`` on this process's test database itself (any schema), as the test's admin.
    Only after `pg_schema`: the database must exist already (it is made outside any loop)."""
    conn = await asyncpg.connect(own_database(), timeout=5)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


@contextmanager
def pg_schema() -> Iterator[str]:
    """A DSN whose connections see only a new, empty schema; dropped afterwards."""
    schema = f"inferclub_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(_execute(own_database(), f'CREATE SCHEMA "{schema}"'))
    except CONNECTION_ERRORS as exc:
        unavailable(
            f"no PostgreSQL at {redact_dsn(server_dsn())} ({exc}); set INFERCLUB_TEST_PG_DSN"
        )
    try:
        yield with_search_path(own_database(), schema)
    finally:
        asyncio.run(admin(f'DROP SCHEMA "{schema}" CASCADE'))
