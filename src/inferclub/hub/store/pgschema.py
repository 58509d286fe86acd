"""PostgreSQL schema migrations, and the URL as it may be shown."""

from __future__ import annotations

import logging
import time
from importlib import resources
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

log = logging.getLogger(__name__)

Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


def migrations() -> list[tuple[int, str]]:
    """``(version, sql)`` for every file in ``migrations/postgres/``, in order."""
    folder = resources.files("inferclub.hub.store").joinpath("migrations").joinpath("postgres")
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


def redact_dsn(dsn: str) -> str:
    """``dsn`` fit for logs and error messages: any password replaced by ``***``."""
    parts = urlsplit(dsn)
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{host}"
    query = [(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="*,")))


async def migrate(conn: Connection) -> None:
    """Apply pending migrations, one transaction each, recording each version.

    A session advisory lock (per schema) makes a second hub starting at the same moment wait
    and then find the work done, instead of running the same DDL twice.
    """
    key = await conn.fetchval(
        "SELECT hashtext('inferclub:migrate:' || coalesce(current_schema(), ''))"
    )
    await conn.execute("SELECT pg_advisory_lock($1)", key)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
        )
        current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
        for version, sql in migrations():
            if version <= current:
                continue
            log.info("applying PostgreSQL schema migration %04d", version)
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                    version,
                    time.time(),
                )
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", key)
