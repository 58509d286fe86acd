"""The requests page's "Download CSV": every row its current filters select, the signed-in
user's only, as a CSV file."""

from __future__ import annotations

import csv
import io
import re
import time
from html import unescape

from inferclub.hub import export
from inferclub.hub.store import RequestRecord
from tests.support.fakes.github import FakeGitHub
from tests.support.hubthread import HubThread
from tests.support.web import WebClient


def history(user_id: int, now: float) -> list[RequestRecord]:
    """120 requests a minute apart: every third for model `small`, every tenth a 500."""
    return [
        RequestRecord(
            id=f"req_{user_id}_{i:020x}",
            user_id=user_id,
            endpoint="/v1/chat/completions",
            started_at=now - 60 * i,
            status=500 if i % 10 == 0 else 200,
            type="llm",
            model="small" if i % 3 == 0 else "big",
        )
        for i in range(120)
    ]


def test_the_csv_download_follows_the_filters(
    dashboard_hub: HubThread, github: FakeGitHub, web: WebClient
) -> None:
    web.github_sign_in(github)
    (me,) = dashboard_hub.query("SELECT id, login FROM users")
    other = dashboard_hub.create_user("mallory")
    now = time.time()
    dashboard_hub.add_requests(history(me["id"], now) + history(other, now))

    page = web.get("/dashboard/requests?model=small&status=200&range=7d")
    link = re.search(r'id="download-csv" download href="([^"]+)"', page.text)
    assert link, page.text[:2000]
    href = unescape(link.group(1))
    assert href.startswith("/dashboard/requests.csv?") and "range" not in href

    resp = web.get(href)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert "attachment" in resp.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert tuple(rows[0]) == export.COLUMNS
    expected = [r.id for r in history(me["id"], now) if r.model == "small" and r.status == 200]
    assert [r["id"] for r in rows] == expected  # newest first, as the page lists them
    assert {r["model"] for r in rows} == {"small"} and {r["status"] for r in rows} == {"200"}

    # Unfiltered: all of mine, none of mallory's.
    everything = list(csv.DictReader(io.StringIO(web.get("/dashboard/requests.csv").text)))
    assert len(everything) == 120 and {r["user"] for r in everything} == {me["login"]}


def test_the_csv_download_needs_a_session(dashboard_hub: HubThread) -> None:
    resp = WebClient(dashboard_hub.url).get("/dashboard/requests.csv")
    assert resp.status == 302 and resp.location.startswith("/login")
