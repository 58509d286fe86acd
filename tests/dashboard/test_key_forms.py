"""The keys page's forms follow POST/redirect/GET: a new key is shown once, on the page the
POST redirects to, so reloading that page neither shows it again nor creates another key."""

from __future__ import annotations

import re

from tests.support.fakes.github import FakeGitHub
from tests.support.hubthread import HubThread
from tests.support.web import WebClient

NEW_KEY = re.compile(r'id="new-key"[^>]*>(ic_\w+)<')


def test_create_redirects_and_reloading_shows_the_key_no_more(
    dashboard_hub: HubThread, github: FakeGitHub, web: WebClient
) -> None:
    web.github_sign_in(github)
    resp = web.post("/dashboard/keys", {"name": "laptop"})
    assert resp.status == 303 and resp.location.startswith("/dashboard/keys?flash=")

    shown = web.get(resp.location)
    match = NEW_KEY.search(shown.text)
    assert shown.status == 200 and match and "Key created." in shown.text
    key = match.group(1)
    # The key is never in a URL, and waits in the store only encrypted.
    assert key not in resp.location
    assert all(
        key not in (r["data"] or "") for r in dashboard_hub.query("SELECT * FROM auth_tokens")
    )

    again = web.get(resp.location)  # a reload of the result page
    assert again.status == 200 and not NEW_KEY.search(again.text) and key not in again.text
    assert len(dashboard_hub.query("SELECT id FROM api_keys")) == 1


def test_rotate_and_revoke_redirect_too(
    dashboard_hub: HubThread, github: FakeGitHub, web: WebClient
) -> None:
    web.github_sign_in(github)
    web.post("/dashboard/keys", {"name": "laptop"})
    (first,) = dashboard_hub.query("SELECT id, prefix FROM api_keys")

    rotated = web.post(f"/dashboard/keys/{first['id']}/rotate")
    assert rotated.status == 303
    page = web.get(rotated.location).text
    assert NEW_KEY.search(page) and "here is its replacement" in page
    assert not NEW_KEY.search(web.get(rotated.location).text)
    assert len(dashboard_hub.query("SELECT id FROM api_keys")) == 2

    (second,) = dashboard_hub.query("SELECT id, prefix FROM api_keys WHERE revoked_at IS NULL")
    revoked = web.post(f"/dashboard/keys/{second['id']}/revoke")
    assert revoked.status == 303
    assert f"Key {second['prefix']}… revoked." in web.get(revoked.location).text
    assert f"Key {second['prefix']}… revoked." not in web.get(revoked.location).text


def test_a_message_is_only_for_the_session_it_was_made_in(
    dashboard_hub: HubThread, github: FakeGitHub, web: WebClient
) -> None:
    web.github_sign_in(github)
    location = web.post("/dashboard/keys", {"name": "laptop"}).location
    # The same user signed in elsewhere (another session) follows the same URL: nothing.
    other = WebClient(dashboard_hub.url)
    other.github_sign_in(github)
    assert not NEW_KEY.search(other.get(location).text)
    # ...and it did not use the message up: this session still sees its key once.
    assert NEW_KEY.search(web.get(location).text)
