"""A PostgreSQL schema of its own for a test, on the server named by ``INFERCLUB_TEST_PG_DSN``.

Without a server the test is skipped with the reason shown; with
``INFERCLUB_REQUIRE_POSTGRES=1`` (CI) it fails instead, so a missing server can't pass unseen.
"""

from __future__ import annotations

import asyncio
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


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("INFERCLUB_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{reason} (INFERCLUB_REQUIRE_POSTGRES=1)")
    pytest.skip(reason)


async def admin(sql: str, *args: object) -> list[asyncpg.Record]:
    """Run ``sql`` on the test server's database itself (any schema), as the test's admin."""
    conn = await asyncpg.connect(server_dsn(), timeout=5)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


@contextmanager
def pg_schema() -> Iterator[str]:
    """A DSN whose connections see only a new, empty schema; dropped afterwards."""
    schema = f"inferclub_test_{uuid.uuid4().hex[:12]}"
    try:
        asyncio.run(admin(f'CREATE SCHEMA "{schema}"'))
    except CONNECTION_ERRORS as exc:
        unavailable(
            f"no PostgreSQL at {redact_dsn(server_dsn())} ({exc}); set INFERCLUB_TEST_PG_DSN"
        )
    try:
        yield with_search_path(server_dsn(), schema)
    finally:
        asyncio.run(admin(f'DROP SCHEMA "{schema}" CASCADE'))
