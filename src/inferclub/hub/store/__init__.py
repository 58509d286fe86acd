"""The only package with SQL in it."""

from __future__ import annotations

import sqlite3

import asyncpg

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
from inferclub.hub.store.pgschema import redact_dsn
from inferclub.hub.store.postgres import PostgresStore
from inferclub.hub.store.sqlite import SQLiteStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(db: str) -> bool:
    """Whether the ``db`` setting names a PostgreSQL database rather than a SQLite file."""
    return db.startswith(POSTGRES_SCHEMES)


def open_store(db: str) -> Store:
    """The store for the ``db`` setting: a ``postgresql://`` (or ``postgres://``) URL selects
    PostgreSQL; anything else is a SQLite file path. Call ``open()`` on it before use."""
    if is_postgres_url(db):
        return PostgresStore(db)
    return SQLiteStore(db.removeprefix("sqlite:///"))


#: Errors that say "this data", not "this database": a row that raises one of them fails again
#: however often it is retried, while a full disk or a lost connection may heal.
_REFUSED_ROW_ERRORS: tuple[type[BaseException], ...] = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    ValueError,
    TypeError,
    OverflowError,
)


def refuses_rows(exc: BaseException) -> bool:
    """Whether ``exc`` (from either backend) means the rows written were refused, so that
    retrying them is pointless; otherwise the store itself is failing and may recover."""
    return isinstance(exc, _REFUSED_ROW_ERRORS)


def describe_db(db: str) -> str:
    """The ``db`` setting as it may be logged: a URL's password is masked."""
    return redact_dsn(db) if is_postgres_url(db) else db


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
