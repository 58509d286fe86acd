from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests/ holds shared helpers (fakes/, hubproc.py); make them importable however pytest runs.
TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from hubproc import HubProcess, start_hub


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubProcess]:
    """A real hub subprocess on port 0 with its own database."""
    with start_hub(tmp_path) as h:
        yield h
