"""Debian's ``chromium`` driven by Playwright: where it is, how it is launched, and where the
dashboard tests save their screenshots. The browser is never downloaded: ``pip install
playwright`` brings only the driver, and ``executable_path`` points at /usr/bin/chromium."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Set by `make test`: a missing browser is then a failure, not a skip.
REQUIRE_ENV = "INFERCLUB_REQUIRE_REAL_ENGINES"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"dashboard-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
