"""The store backends the store tests run on: what to open, and how each reports a broken
constraint (the drivers' own errors pass through the store unchanged)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from inferclub.hub.store import Store, open_store
from tests.support.postgres import pg_schema


@dataclass(frozen=True)
class Backend:
    name: str
    #: The ``db`` setting: a SQLite path or a ``postgresql://`` URL.
    db: str
    integrity_error: type[Exception]

    async def open(self) -> Store:
        """A new, opened store instance on this backend's database (another "hub")."""
        store = open_store(self.db)
        await store.open()
        return store


def sqlite_backend(tmp_path: Path) -> Backend:
    return Backend("sqlite", str(tmp_path / "h.db"), sqlite3.IntegrityError)


@contextmanager
def postgres_backend() -> Iterator[Backend]:
    with pg_schema() as dsn:
        yield Backend("postgres", dsn, asyncpg.IntegrityConstraintViolationError)
