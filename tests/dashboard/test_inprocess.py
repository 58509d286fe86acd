"""The dashboard as an in-process application: cookie flags behind https, history pagination,
filters and chart data over many rows, and the store methods the dashboard added."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import tornado.web

from inferclub.hub.app import Hub, make_app
from inferclub.hub.config import Secrets, Settings
from inferclub.hub.store import RequestFilter, RequestRecord, SQLiteStore

PUBLIC = "https://hub.example.org"


@pytest.fixture
def https_hub(tmp_path: Path) -> Hub:
    """The hub behind `app` (which pytest-tornasync serves), not started yet, configured as
    if behind https with GitHub sign-in."""
    settings = Settings(
        db=str(tmp_path / "h.db"),
        public_url=PUBLIC,
        github_client_id="cid",
        github_client_secret="secret",
        github_url="https://gh.example",
    )
    return Hub(settings, SQLiteStore(settings.db_path), Secrets(b"pepper" * 6, "cookie-secret"))


@pytest.fixture
def app(https_hub: Hub) -> tornado.web.Application:
    return make_app(https_hub)


@asynccontextmanager
async def running(hub: Hub) -> AsyncIterator[Hub]:
    await hub.store.open()
    await hub.start()
    try:
        yield hub
    finally:
        await hub.stop()
        await hub.store.close()


async def sign_in(hub: Hub, client: Any, login: str = "alice") -> tuple[int, str]:
    """A session for a new user through a one-time link: (user id, Cookie header)."""
    user = await hub.store.create_user(login)
    link = await hub.accounts.create_login_link(user.id, PUBLIC, 60)
    path = link[len(PUBLIC) :]
    resp = await client.fetch(path, follow_redirects=False, raise_error=False)
    assert resp.code == 302
    cookies = resp.headers.get_list("Set-Cookie")
    (session,) = [c for c in cookies if c.startswith("__Host-inferclub_session=")]
    return user.id, session.split(";")[0]


async def test_behind_https_cookies_are_secure_and_host_prefixed(
    https_hub: Hub, http_server_client: Any
) -> None:
    async with running(https_hub):
        _, cookie = await sign_in(https_hub, http_server_client)
        resp = await http_server_client.fetch(
            "/dashboard/keys", headers={"Cookie": cookie}, raise_error=False, follow_redirects=False
        )
        assert resp.code == 200
        cookies = resp.headers.get_list("Set-Cookie")
        xsrf = [c for c in cookies if c.startswith("__Host-inferclub_xsrf=")]
        assert xsrf and all(f in xsrf[0] for f in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/"))
        assert "Domain" not in xsrf[0]
        assert not [c for c in cookies if c.startswith("_xsrf=")]

        # The session cookie, as set by the sign-in.
        user = await https_hub.store.create_user("bob")
        link = await https_hub.accounts.create_login_link(user.id, PUBLIC, 60)
        resp = await http_server_client.fetch(
            link[len(PUBLIC) :], follow_redirects=False, raise_error=False
        )
        (session,) = [c for c in resp.headers.get_list("Set-Cookie") if "inferclub_session" in c]
        assert session.startswith("__Host-inferclub_session=")
        for flag in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/"):
            assert flag in session
        assert "Domain" not in session

        # The OAuth callback is built from public_url, and the state cookie is Secure too.
        resp = await http_server_client.fetch(
            "/auth/github", follow_redirects=False, raise_error=False
        )
        assert resp.code == 302
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(resp.headers["Location"]).query))
        assert q["redirect_uri"] == PUBLIC + "/auth/github/callback"
        assert resp.headers["Location"].startswith("https://gh.example/login/oauth/authorize?")
        (state,) = [
            c for c in resp.headers.get_list("Set-Cookie") if c.startswith("inferclub_oauth_state=")
        ]
        assert "Secure" in state and "HttpOnly" in state and "SameSite=Lax" in state


async def test_security_headers_on_pages(https_hub: Hub, http_server_client: Any) -> None:
    async with running(https_hub):
        resp = await http_server_client.fetch("/login")
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["Cache-Control"] == "no-store"


def _rows(user_id: int, now: float) -> list[RequestRecord]:
    rows = []
    for i in range(120):
        rows.append(
            RequestRecord(
                id=f"req_{i:024x}",
                user_id=user_id,
                endpoint="/v1/chat/completions",
                started_at=now - 3600 * 48 + i * 1200 + 60,  # one every 20 min, off bucket edges
                status=500 if i % 10 == 0 else 200,
                type="llm" if i % 2 else "stt",
                model="big" if i % 3 else "small",
                ttfb_ms=10.0 + i,
                duration_ms=100.0 + i,
                prompt_tokens=5,
                completion_tokens=i,
            )
        )
    return rows


def _table_ids(html: str) -> list[str]:
    return re.findall(r'<tr data-request-id="([^"]+)"', html)


def _chart(html: str) -> dict[str, Any]:
    m = re.search(r'<script type="application/json" id="chart-data">(.*?)</script>', html)
    assert m
    return json.loads(m.group(1))  # type: ignore[no-any-return]


async def test_history_pages_filters_and_chart_buckets(
    https_hub: Hub, http_server_client: Any
) -> None:
    async with running(https_hub):
        uid, cookie = await sign_in(https_hub, http_server_client)
        other, _ = await sign_in(https_hub, http_server_client, "mallory")
        now = time.time()
        rows = _rows(uid, now)
        await https_hub.store.add_requests(
            [
                *rows,
                RequestRecord(
                    id="req_theirs",
                    user_id=other,
                    endpoint="/v1/chat/completions",
                    started_at=now,
                    status=200,
                ),
            ]
        )

        async def page(query: str) -> str:
            resp = await http_server_client.fetch(
                "/dashboard/requests" + query, headers={"Cookie": cookie}
            )
            return resp.body.decode()

        first = await page("")
        newest_first = [r.id for r in sorted(rows, key=lambda r: -r.started_at)]
        assert _table_ids(first) == newest_first[:50]
        assert "1–50 of 120" in first and "page 1 of 3" in first and "req_theirs" not in first
        last = await page("?page=3")
        assert _table_ids(last) == newest_first[100:] and "101–120 of 120" in last
        assert _table_ids(await page("?page=99")) == newest_first[100:]

        errors = await page("?status=500")
        assert len(_table_ids(errors)) == 12 and "of 12" in errors
        both = await page("?model=small&type=stt")
        expected = [r for r in rows if r.model == "small" and r.type == "stt"]
        assert f"of {len(expected)}<" in both
        # Filters survive paging links.
        llm = await page("?type=llm")
        assert "1–50 of 60" in llm and 'rel="next" href="?type=llm&amp;range=24h&amp;page=2"' in llm
        assert 'rel="next"' not in errors and 'rel="prev"' not in errors

        day = datetime.fromtimestamp(rows[60].started_at, UTC).strftime("%Y-%m-%d")
        dated = await page(f"?from={day}&to={day}")
        today = [
            r for r in rows if datetime.fromtimestamp(r.started_at, UTC).strftime("%Y-%m-%d") == day
        ]
        assert 0 < len(today) < 120 and f"of {len(today)}<" in dated

        # Charts: last 24 h in 30-minute buckets; every request of the window counted once.
        chart = _chart(first)
        assert chart["bucket"] == 1800 and 48 <= len(chart["series"]) <= 49
        in_window = [r for r in rows if r.started_at >= now - 86400]
        assert sum(b["requests"] for b in chart["series"]) == len(in_window)
        assert sum(b["errors"] for b in chart["series"]) == sum(r.status >= 400 for r in in_window)
        assert sum(b["completion_tokens"] for b in chart["series"]) == sum(
            r.completion_tokens or 0 for r in in_window
        )
        week = _chart(await page("?range=7d"))
        assert week["bucket"] == 3 * 3600 and sum(b["requests"] for b in week["series"]) == 120


async def test_store_auth_tokens_work_once_and_expire(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    try:
        user = await store.create_user("alice")
        now = time.time()
        await store.create_auth_token("login_link", "h1", user.id, now + 60)
        await store.create_auth_token("session", "h2", user.id, now + 60)
        await store.create_auth_token("login_link", "old", user.id, now - 1)
        assert await store.get_auth_token("session", "h1", now) is None, "kinds do not mix"
        first = await store.consume_auth_token("login_link", "h1", now)
        assert first is not None and first.user_id == user.id
        assert await store.consume_auth_token("login_link", "h1", now) is None
        session = await store.get_auth_token("session", "h2", now)
        assert session is not None and await store.get_auth_token("session", "h2", now) is not None
        assert await store.get_auth_token("session", "h2", now + 61) is None
        assert await store.consume_auth_token("login_link", "old", now) is None
        assert await store.delete_auth_token("session", "h2")
        assert not await store.delete_auth_token("session", "h2")
    finally:
        await store.close()


async def test_store_request_buckets(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    try:
        base = 1_700_000_000.0 - 1_700_000_000.0 % 3600
        rows = [
            RequestRecord(
                "a",
                1,
                "/v1/x",
                base + 10,
                200,
                ttfb_ms=10,
                duration_ms=100,
                prompt_tokens=1,
                completion_tokens=2,
                model="m",
            ),
            RequestRecord(
                "b", 1, "/v1/x", base + 20, 502, ttfb_ms=None, duration_ms=300, model="m"
            ),
            RequestRecord(
                "c",
                1,
                "/v1/x",
                base + 3600 + 5,
                200,
                ttfb_ms=30,
                duration_ms=50,
                prompt_tokens=4,
                completion_tokens=8,
                model="n",
            ),
            RequestRecord("d", 2, "/v1/x", base + 15, 200, model="m"),
        ]
        await store.add_requests(rows)
        b1, b2 = await store.request_buckets(1, None, 3600)
        assert (
            b1.start,
            b1.requests,
            b1.errors,
            b1.avg_ttfb_ms,
            b1.avg_duration_ms,
            b1.prompt_tokens,
            b1.completion_tokens,
        ) == (base, 2, 1, 10, 200, 1, 2)
        assert (b2.start, b2.requests, b2.errors, b2.prompt_tokens) == (base + 3600, 1, 0, 4)
        (only,) = await store.request_buckets(1, RequestFilter(model="n"), 3600)
        assert only.start == base + 3600
    finally:
        await store.close()
