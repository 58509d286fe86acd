"""Fixtures of the dashboard tests: a fake GitHub, hubs pointed at it (in-process for HTTP
tests, a subprocess for the browser), a cookie-keeping HTTP client, and a real headless
Chromium (Debian's ``chromium``) driven by Playwright."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, REQUIRE_ENV
from tests.support.fakes.github import FakeGitHub
from tests.support.hubproc import HubProcess, start_hub
from tests.support.hubthread import HubThread, hub_in_thread
from tests.support.web import WebClient


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with FakeGitHub() as gh:
        yield gh


@pytest.fixture
def dashboard_hub(tmp_path: Path, github: FakeGitHub) -> Iterator[HubThread]:
    """The hub in-process (in a thread, for blocking clients), with GitHub sign-in against
    the fake GitHub."""
    with hub_in_thread(tmp_path, env=github.hub_env()) as hub:
        yield hub


@pytest.fixture
def browser_hub(tmp_path: Path, github: FakeGitHub) -> Iterator[HubProcess]:
    """A hub subprocess with GitHub sign-in against the fake GitHub, for the browser tests."""
    with start_hub(tmp_path, env=github.hub_env()) as hub:
        yield hub


@pytest.fixture
def web(dashboard_hub: HubThread) -> WebClient:
    return WebClient(dashboard_hub.url)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium per test module. Not per session: Playwright's sync API keeps its event
    loop marked running while it is open, which in-process Tornado tests cannot share."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: apt-get install chromium (make test does)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context (no cookies) and page; its console errors fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(15_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("dialog", lambda dialog: dialog.accept())
    try:
        yield pg
    finally:
        context.close()
    assert not errors, f"JavaScript errors: {errors}"
