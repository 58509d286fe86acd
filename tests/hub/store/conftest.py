from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stores import Backend, postgres_backend, sqlite_backend


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each store test once on SQLite (a fresh file) and once on PostgreSQL (a fresh schema)."""
    if request.param == "sqlite":
        yield sqlite_backend(tmp_path)
    else:
        with postgres_backend() as found:
            yield found
