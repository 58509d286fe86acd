"""Fixtures of the dashboard tests: a fake GitHub, hubs pointed at it, a cookie-keeping HTTP
client that does not follow redirects, and a real headless Chromium (Debian's ``chromium``)
driven by Playwright. The browser is never downloaded: ``pip install playwright`` brings only
the driver, and ``executable_path`` points at /usr/bin/chromium."""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from tests.support.fakes.github import FakeGitHub
from tests.support.hubproc import HubProcess, start_hub

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


# -- HTTP without a browser -------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: Message
    body: bytes
    url: str

    @property
    def location(self) -> str:
        return self.headers.get("Location", "")

    def set_cookies(self) -> list[str]:
        return self.headers.get_all("Set-Cookie") or []

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class WebClient:
    """A browser stand-in: keeps cookies, never follows redirects on its own."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect()
        )

    def request(
        self,
        method: str,
        url: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        if url.startswith("/"):
            url = self.base + url
        req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        try:
            with self.opener.open(req, timeout=30) as resp:
                return Response(resp.status, resp.headers, resp.read(), url)
        except urllib.error.HTTPError as err:
            with err:
                return Response(err.code, err.headers, err.read(), url)

    def get(self, url: str, headers: dict[str, str] | None = None) -> Response:
        return self.request("GET", url, headers=headers)

    def post(
        self,
        url: str,
        fields: dict[str, str] | None = None,
        xsrf: bool = True,
        headers: dict[str, str] | None = None,
    ) -> Response:
        fields = dict(fields or {})
        if xsrf:
            fields["_xsrf"] = self.xsrf_token()
        return self.request(
            "POST",
            url,
            urllib.parse.urlencode(fields).encode(),
            {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
        )

    def cookie(self, name: str) -> str | None:
        return next((c.value for c in self.jar if c.name == name), None)

    def xsrf_token(self) -> str:
        """The token a page embeds (its meta tag), which also sets the ``_xsrf`` cookie."""
        page = self.get("/login")
        if page.status == 302:  # signed in
            page = self.get("/dashboard/keys")
        m = re.search(r'<meta name="xsrf-token" content="([^"]+)"', page.text)
        assert m, page.text[:500]
        return m.group(1)

    def signed_in_as(self) -> str | None:
        """The login the dashboard shows, or None when it sends us to the sign-in page."""
        resp = self.get("/dashboard/keys")
        if resp.status != 200:
            return None
        m = re.search(r'<span class="login"[^>]*>([^<]+)</span>', resp.text)
        return m.group(1) if m else None

    def github_sign_in(self, github: FakeGitHub) -> Response:
        """The whole web flow; returns the hub's answer to GitHub's redirect back."""
        start = self.get("/auth/github")
        assert start.status == 302 and start.location.startswith(github.root), start
        back = self.get(start.location)  # the fake GitHub: no cookies of the hub go there
        assert back.status == 302, back.text
        return self.get(back.location)


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with FakeGitHub() as gh:
        yield gh


StartHub = Callable[..., AbstractContextManager[HubProcess]]


@pytest.fixture
def dashboard_hub(tmp_path: Path, github: FakeGitHub) -> Iterator[HubProcess]:
    """A hub subprocess with GitHub sign-in against the fake GitHub."""
    with start_hub(tmp_path, env=github.hub_env()) as hub:
        yield hub


@pytest.fixture
def web(dashboard_hub: HubProcess) -> WebClient:
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


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"dashboard-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
