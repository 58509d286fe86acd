"""The keys page offers a key's scope when creating one and shows it in the table; the key
then does only what its scope allows."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.fakes.agent import LLM, FakeAgent
from tests.support.fakes.github import FakeGitHub
from tests.support.hubthread import HubThread, hub_in_thread
from tests.support.web import WebClient


def row_of(page: str, key_id: int) -> str:
    found = re.search(rf'<tr data-key-id="{key_id}".*?</tr>', page, re.S)
    assert found, f"no row for key {key_id}"
    return found.group(0)


def test_create_a_key_with_a_scope_and_see_it_in_the_table(
    dashboard_hub: HubThread, github: FakeGitHub, web: WebClient
) -> None:
    web.github_sign_in(github)
    form = web.get("/dashboard/keys").text
    assert re.search(r'<select id="key-scope" name="scope">', form)
    assert all(f'<option value="{s}"' in form for s in ("all", "inference", "agent"))

    resp = web.post("/dashboard/keys", {"name": "phone app", "scope": "inference"})
    assert resp.status == 303
    match = re.search(r'id="new-key"[^>]*>(ic_\w+)<', web.get(resp.location).text)
    assert match
    key = match.group(1)
    (row,) = dashboard_hub.query("SELECT id, scope FROM api_keys")
    assert row["scope"] == "inference"
    assert "<code>inference</code>" in row_of(web.get("/dashboard/keys").text, row["id"])

    # What the scope means: this key cannot heartbeat.
    with FakeAgent(["m1"]) as agent:
        status, body = dashboard_hub.heartbeat(key, "rig", agent.url, LLM)
    assert status == 403 and body["error"]["code"] == "insufficient_scope"

    # Rotation keeps the scope; a key created without one gets `all`.
    rotated = web.post(f"/dashboard/keys/{row['id']}/rotate")
    assert rotated.status == 303
    web.post("/dashboard/keys", {"name": "laptop"})
    scopes = [r["scope"] for r in dashboard_hub.query("SELECT scope FROM api_keys ORDER BY id")]
    assert scopes == ["inference", "inference", "all"]


def test_an_unknown_scope_is_refused_and_nothing_is_stored(
    dashboard_hub: HubThread, github: FakeGitHub, web: WebClient
) -> None:
    web.github_sign_in(github)
    resp = web.post("/dashboard/keys", {"name": "x", "scope": "admin"})
    assert resp.status == 400 and "Choose a scope" in resp.text
    assert dashboard_hub.query("SELECT id FROM api_keys") == []


def test_a_user_cannot_create_keys_without_end(tmp_path: Path, github: FakeGitHub) -> None:
    """Each key is a row, and each new one empties every user's key cache: a tenant creating
    keys in a loop is stopped at `max_keys_per_user` active keys; a revoked one makes room."""
    with hub_in_thread(tmp_path, env=github.hub_env(), max_keys_per_user=2) as hub:
        web = WebClient(hub.url)
        web.github_sign_in(github)
        assert web.post("/dashboard/keys", {"name": "a"}).status == 303
        assert web.post("/dashboard/keys", {"name": "b"}).status == 303
        refused = web.post("/dashboard/keys", {"name": "c"})
        assert refused.status == 429 and "revoke one first" in refused.text
        assert [r["name"] for r in hub.query("SELECT name FROM api_keys")] == ["a", "b"]

        (first, _) = [r["id"] for r in hub.query("SELECT id FROM api_keys ORDER BY id")]
        assert web.post(f"/dashboard/keys/{first}/revoke").status == 303
        assert web.post("/dashboard/keys", {"name": "c"}).status == 303
