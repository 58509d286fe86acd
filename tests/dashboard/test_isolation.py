"""Everything a user sees is theirs alone: another user's key, provider or request id is a 404
on every route that takes one, and nothing of theirs shows up anywhere."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from tests.support.fakes.agent import FakeAgent
from tests.support.fakes.github import FakeGitHub
from tests.support.hubthread import HubThread
from tests.support.web import WebClient


@pytest.fixture
def alices_agent() -> Iterator[FakeAgent]:
    with FakeAgent(["alices-model"]) as a:
        yield a


def sign_in(hub: HubThread, github: FakeGitHub, gh_id: int, login: str) -> WebClient:
    github.user = {"id": gh_id, "login": login}
    web = WebClient(hub.url)
    web.github_sign_in(github)
    assert web.signed_in_as() == "@" + login, "GitHub accounts sign in as @login"
    return web


def test_another_users_ids_are_404_everywhere(
    dashboard_hub: HubThread, github: FakeGitHub, alices_agent: FakeAgent
) -> None:
    hub = dashboard_hub
    alice = sign_in(hub, github, 1, "alice")
    bob = sign_in(hub, github, 2, "bob")
    key = hub.create_key("@alice", "alices-laptop")
    status, beat = hub.heartbeat(
        key,
        "alices-rig",
        alices_agent.url,
        [{"name": "s", "type": "llm", "engine": "vllm", "models": ["alices-model"]}],
    )
    assert status == 200
    provider_id = beat["provider_id"]
    with openai.OpenAI(base_url=hub.api_base, api_key=key, max_retries=0) as client:
        client.chat.completions.create(
            model="alices-model", messages=[{"role": "user", "content": "x"}]
        )
    request_id = hub.wait_for_request_rows(1)[0]["id"]
    key_id = hub.query("SELECT id FROM api_keys")[0][0]

    # Alice sees her things.
    assert alice.get(f"/dashboard/requests/{request_id}").status == 200
    assert alice.get(f"/dashboard/api/providers/{provider_id}").status == 200

    # Bob gets 404s for every one of her ids, on every route that takes one.
    for path in (f"/dashboard/requests/{request_id}", f"/dashboard/api/providers/{provider_id}"):
        assert bob.get(path).status == 404, path
    for path in (
        f"/dashboard/keys/{key_id}/revoke",
        f"/dashboard/keys/{key_id}/rotate",
        f"/dashboard/providers/{provider_id}/delete",
    ):
        assert bob.post(path).status == 404, path
    # Nothing of hers on any of his pages.
    for path in (
        "/dashboard/keys",
        "/dashboard/providers",
        "/dashboard/requests",
        "/dashboard/playground",
        "/dashboard/api/providers",
        "/dashboard/api/models",
    ):
        text = bob.get(path).text
        for secret in (
            key[:11],
            "alices-laptop",
            "alices-rig",
            "alices-model",
            request_id,
            alices_agent.url,
        ):
            assert secret not in text, (path, secret)

    # Her model is unknown to him in the playground, as on /v1 (last: this request is his,
    # and his history shows the name he typed).
    body = json.dumps(
        {"model": "alices-model", "messages": [{"role": "user", "content": "x"}]}
    ).encode()
    resp = bob.request(
        "POST",
        "/dashboard/api/v1/chat/completions",
        body,
        {"Content-Type": "application/json", "X-XSRFToken": bob.xsrf_token()},
    )
    assert resp.status == 404 and resp.json()["error"]["code"] == "model_not_found"

    # And nothing of hers changed.
    assert hub.query("SELECT revoked_at FROM api_keys")[0][0] is None
    assert len(hub.query("SELECT id FROM providers")) == 1
    with openai.OpenAI(base_url=hub.api_base, api_key=key, max_retries=0) as client:
        assert [m.id for m in client.models.list().data] == ["alices-model"]
    assert alice.get(f"/dashboard/api/providers/{provider_id}").json()["name"] == "alices-rig"


def test_unknown_ids_are_404(dashboard_hub: HubThread, github: FakeGitHub) -> None:
    web = sign_in(dashboard_hub, github, 1, "alice")
    assert web.get("/dashboard/requests/req_000000000000000000000000").status == 404
    assert web.get("/dashboard/api/providers/99").status == 404
    assert web.post("/dashboard/keys/99/revoke").status == 404
    assert web.post("/dashboard/providers/99/delete").status == 404
    page = web.get("/dashboard/requests/req_nope")
    assert page.status == 404 and "No such request." in page.text and "Traceback" not in page.text


def test_pages_and_json_need_a_session(dashboard_hub: HubThread) -> None:
    anon = WebClient(dashboard_hub.url)
    for path in (
        "/dashboard/keys",
        "/dashboard/providers",
        "/dashboard/requests",
        "/dashboard/playground",
        "/dashboard/requests/req_x",
    ):
        resp = anon.get(path)
        assert resp.status == 302 and resp.location.startswith("/login?next="), path
    for path in ("/dashboard/api/providers", "/dashboard/api/models", "/dashboard/api/providers/1"):
        resp = anon.get(path)
        assert resp.status == 401 and resp.json()["error"]["message"], path
    assert anon.post("/dashboard/keys", {"name": "x"}).status == 403
    assert anon.get("/").location == "/login"
