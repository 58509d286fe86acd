from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.hubproc import HubProcess, start_hub

# The fake hub and agent runner fixtures plugin authors use (`fake_hub`, `start_agent`).
pytest_plugins = ["inferclub.testing"]


@pytest.fixture
def hub_process(tmp_path: Path) -> Iterator[HubProcess]:
    """A real hub subprocess on port 0 with its own database."""
    with start_hub(tmp_path) as h:
        yield h
