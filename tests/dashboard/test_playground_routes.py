"""Every proxied ``/v1`` endpoint has its playground twin under ``/dashboard/api``: the same
answers, with the session cookie and the XSRF token in place of the bearer key."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import tornado.web

from inferclub.hub.app import Hub, make_app
from inferclub.hub.config import Secrets, Settings
from inferclub.hub.handlers import openai
from inferclub.hub.store import SQLiteStore

#: The /v1 endpoints the hub proxies to agents, from its route table.
PROXIED = [
    pattern
    for pattern, handler in openai.routes
    if isinstance(handler, type) and issubclass(handler, openai.ProxyHandler)
]


@pytest.fixture
def playground_hub(tmp_path: Path) -> Hub:
    settings = Settings(db=str(tmp_path / "h.db"))
    return Hub(settings, SQLiteStore(settings.db_path), Secrets(b"pepper" * 6, "cookie-secret"))


@pytest.fixture
def app(playground_hub: Hub) -> tornado.web.Application:
    return make_app(playground_hub)


@asynccontextmanager
async def running(playground_hub: Hub) -> AsyncIterator[Hub]:
    await playground_hub.store.open()
    await playground_hub.start()
    try:
        yield playground_hub
    finally:
        await playground_hub.stop()
        await playground_hub.store.close()


def _cookie(resp: Any, name: str) -> str:
    (found,) = [c for c in resp.headers.get_list("Set-Cookie") if c.startswith(name + "=")]
    return str(found.split(";")[0])


async def _browser_headers(playground_hub: Hub, client: Any, user_id: int) -> dict[str, str]:
    """What the playground page sends: its session and XSRF cookies and the XSRF header."""
    link = await playground_hub.accounts.create_login_link(user_id, "http://hub", 60)
    resp = await client.fetch(link[len("http://hub") :], follow_redirects=False, raise_error=False)
    assert resp.code == 302
    session = _cookie(resp, "inferclub_session")
    page = await client.fetch("/dashboard/playground", headers={"Cookie": session})
    token = re.search(r'<meta name="xsrf-token" content="([^"]+)"', page.body.decode())
    assert token is not None
    return {
        "Cookie": f"{session}; {_cookie(page, '_xsrf')}",
        "X-XSRFToken": token.group(1),
        "Content-Type": "application/json",
    }


def _error(resp: Any) -> tuple[int, str]:
    return resp.code, json.loads(resp.body)["error"]["code"]


async def test_each_proxied_endpoint_answers_in_the_playground_as_on_v1(
    playground_hub: Hub, http_server_client: Any
) -> None:
    assert len(PROXIED) >= 8
    async with running(playground_hub):
        alice = await playground_hub.accounts.create_user("alice")
        key = (await playground_hub.accounts.issue_key(alice.id)).secret
        browser = await _browser_headers(playground_hub, http_server_client, alice.id)
        body = json.dumps({"model": "nowhere", "messages": [], "input": "x"})
        for path in PROXIED:
            v1 = await http_server_client.fetch(
                path,
                method="POST",
                body=body,
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                raise_error=False,
            )
            play = await http_server_client.fetch(
                "/dashboard/api" + path,
                method="POST",
                body=body,
                headers=browser,
                raise_error=False,
            )
            # No provider serves "nowhere"; uploads want multipart first. Either way, the same.
            assert _error(play) == _error(v1), path
            assert v1.code in (400, 404), path

            anon = dict(browser, Cookie=browser["Cookie"].split("; ")[1])
            signed_out = await http_server_client.fetch(
                "/dashboard/api" + path, method="POST", body=body, headers=anon, raise_error=False
            )
            assert _error(signed_out) == (401, "not_signed_in"), path
            no_xsrf = {k: v for k, v in browser.items() if k != "X-XSRFToken"}
            forged = await http_server_client.fetch(
                "/dashboard/api" + path,
                method="POST",
                body=body,
                headers=no_xsrf,
                raise_error=False,
            )
            assert forged.code == 403, path
