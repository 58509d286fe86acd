"""The only package with SQL in it."""

from __future__ import annotations

from inferclub.hub.store.base import AlreadyExists, RequestFilter, Store, StoreError
from inferclub.hub.store.models import (
    ApiKey,
    AuthToken,
    KeyOwner,
    ProviderRecord,
    RequestBucket,
    RequestRecord,
    ServiceInfo,
    User,
)
from inferclub.hub.store.sqlite import SQLiteStore


def open_store(url_or_path: str) -> Store:
    """A store for ``url_or_path``: a SQLite file path (the default backend)."""
    if url_or_path.startswith(("postgres://", "postgresql://")):
        raise StoreError(
            "the PostgreSQL backend is not available in this release; use a SQLite path"
        )
    return SQLiteStore(url_or_path.removeprefix("sqlite:///"))


__all__ = [
    "AlreadyExists",
    "ApiKey",
    "AuthToken",
    "KeyOwner",
    "ProviderRecord",
    "RequestBucket",
    "RequestFilter",
    "RequestRecord",
    "SQLiteStore",
    "ServiceInfo",
    "Store",
    "StoreError",
    "User",
    "open_store",
]
