"""The hub serves a favicon, where browsers look for it and where its pages point."""

from __future__ import annotations

import re

from tests.support.hubthread import HubThread
from tests.support.web import WebClient

ICO_HEADER = b"\x00\x00\x01\x00"


def test_favicon_at_the_root_and_linked_from_pages(dashboard_hub: HubThread) -> None:
    web = WebClient(dashboard_hub.url)
    resp = web.get("/favicon.ico")
    assert resp.status == 200 and resp.body.startswith(ICO_HEADER)
    assert resp.headers["Content-Type"].startswith("image/")

    login = web.get("/login").text
    link = re.search(r'<link rel="icon" href="([^"]+)"', login)
    assert link and link.group(1).startswith("/static/favicon.ico")
    assert web.get(link.group(1)).body == resp.body
