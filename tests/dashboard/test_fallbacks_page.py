"""Fallback models on the providers page: set, refused, removed; XSRF like every mutation."""

from __future__ import annotations

from tests.support.fakes.github import FakeGitHub
from tests.support.hubthread import HubThread
from tests.support.web import WebClient


def test_fallbacks_are_set_and_removed_on_the_providers_page(
    dashboard_hub: HubThread, github: FakeGitHub, web: WebClient
) -> None:
    web.github_sign_in(github)
    form = {"model": "qwen3-32b", "fallback": "qwen3-8b"}
    assert web.post("/dashboard/fallbacks", form, xsrf=False).status == 403
    resp = web.post("/dashboard/fallbacks", form)
    assert resp.status == 302 and resp.location == "/dashboard/providers#fallbacks"
    page = web.get("/dashboard/providers").text
    assert 'data-model="qwen3-32b"' in page and "<code>qwen3-8b</code>" in page
    rows = dashboard_hub.query("SELECT model, fallback FROM model_fallbacks")
    assert [tuple(r) for r in rows] == [("qwen3-32b", "qwen3-8b")]
    refused = web.post("/dashboard/fallbacks", {"model": "x", "fallback": "x"})
    assert refused.status == 400 and "its own fallback" in refused.text
    resp = web.post("/dashboard/fallbacks", {"model": "qwen3-32b", "remove": "1"})
    assert resp.status == 302
    assert 'data-model="qwen3-32b"' not in web.get("/dashboard/providers").text
    assert dashboard_hub.query("SELECT * FROM model_fallbacks") == []
