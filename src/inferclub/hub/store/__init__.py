"""The only package with SQL in it.

The PostgreSQL side (asyncpg and the modules that use it) is imported only when a
``postgresql://`` database is opened or `PostgresStore` is asked for: every hub and every
``inferclub`` command on SQLite would otherwise import asyncpg for nothing (about 60 ms of CPU
per process, and the test suite starts hundreds of them).
"""

from __future__ import annotations

import sqlite3
import sys
from typing import TYPE_CHECKING, Any

from inferclub.hub.store.base import (
    KEYS_CHANNEL,
    PROVIDERS_CHANNEL,
    AlreadyExists,
    ChangeCallback,
    ProviderNameTaken,
    RequestFilter,
    Store,
    StoreError,
)
from inferclub.hub.store.models import (
    ApiKey,
    AuthToken,
    Fallback,
    KeyOwner,
    ProviderChanges,
    ProviderRecord,
    ProviderSeen,
    RequestBucket,
    RequestRecord,
    ServiceInfo,
    User,
)
from inferclub.hub.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from inferclub.hub.store.postgres import PostgresStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(db: str) -> bool:
    """Whether the ``db`` setting names a PostgreSQL database rather than a SQLite file."""
    return db.startswith(POSTGRES_SCHEMES)


def open_store(db: str) -> Store:
    """The store for the ``db`` setting: a ``postgresql://`` (or ``postgres://``) URL selects
    PostgreSQL; anything else is a SQLite file path. Call ``open()`` on it before use."""
    if is_postgres_url(db):
        from inferclub.hub.store.postgres import PostgresStore

        return PostgresStore(db)
    return SQLiteStore(db.removeprefix("sqlite:///"))


#: Errors that say "this data", not "this database": a row that raises one of them fails again
#: however often it is retried, while a full disk or a lost connection may heal.
_REFUSED_ROW_ERRORS: tuple[type[BaseException], ...] = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    ValueError,
    TypeError,
    OverflowError,
)


def refuses_rows(exc: BaseException) -> bool:
    """Whether ``exc`` (from either backend) means the rows written were refused, so that
    retrying them is pointless; otherwise the store itself is failing and may recover."""
    if isinstance(exc, _REFUSED_ROW_ERRORS):
        return True
    # Only a process that imported asyncpg (a PostgreSQL store) can hold one of its errors.
    asyncpg = sys.modules.get("asyncpg")
    return asyncpg is not None and isinstance(
        exc, (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)
    )


def describe_db(db: str) -> str:
    """The ``db`` setting as it may be logged: a URL's password is masked."""
    if not is_postgres_url(db):
        return db
    from inferclub.hub.store.pgschema import redact_dsn

    return redact_dsn(db)


def __getattr__(name: str) -> Any:
    """`PostgresStore`, imported on first use (see the module's docstring)."""
    if name == "PostgresStore":
        from inferclub.hub.store.postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "KEYS_CHANNEL",
    "PROVIDERS_CHANNEL",
    "AlreadyExists",
    "ApiKey",
    "AuthToken",
    "Fallback",
    "ChangeCallback",
    "KeyOwner",
    "PostgresStore",
    "ProviderNameTaken",
    "ProviderChanges",
    "ProviderRecord",
    "ProviderSeen",
    "RequestBucket",
    "RequestFilter",
    "RequestRecord",
    "SQLiteStore",
    "ServiceInfo",
    "Store",
    "StoreError",
    "User",
    "describe_db",
    "is_postgres_url",
    "open_store",
    "refuses_rows",
]
