"""A browser stand-in for the dashboard over plain HTTP: keeps cookies, never follows
redirects on its own, and walks the GitHub sign-in against the fake GitHub."""

from __future__ import annotations

import http.cookiejar
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import Any

from tests.support.fakes.github import FakeGitHub


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
