"""Sign-in edge cases over plain HTTP (no browser): the OAuth state, PKCE, where the GitHub token
goes, accounts keyed by GitHub id, one-time links, sessions, logout and XSRF, and /v1 ignoring
cookies."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from pathlib import Path

import openai
import pytest

from tests.support.fakes.github import FakeGitHub
from tests.support.hubproc import HubProcess, start_hub
from tests.support.hubthread import HubThread, hub_in_thread
from tests.support.web import WebClient

SESSION = "inferclub_session"


def session_set(resp: object) -> bool:
    """Did this response set a (non-empty) session cookie?"""
    return any(
        c.startswith(f"{SESSION}=") and not c.startswith(f'{SESSION}=""')
        for c in resp.set_cookies()
    )  # type: ignore[attr-defined]


def printed_link(hub: HubProcess, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in hub.stdout_lines:
            m = re.search(r"(http://\S+/auth/link\?token=\S+)", line)
            if m:
                return m.group(1)
        time.sleep(0.05)
    raise AssertionError(f"no sign-in link printed: {hub.stdout_lines}")


def test_github_sign_in_uses_state_pkce_and_json_and_sets_a_strict_session_cookie(
    dashboard_hub: HubThread, github: FakeGitHub, web: WebClient
) -> None:
    start = web.get("/auth/github?next=/dashboard/requests")
    assert start.status == 302
    state_cookie = next(c for c in start.set_cookies() if c.startswith("inferclub_oauth_state="))
    assert "HttpOnly" in state_cookie and "SameSite=Lax" in state_cookie
    assert "Path=/auth/github" in state_cookie

    url = urllib.parse.urlsplit(start.location)
    q = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
    assert f"{url.scheme}://{url.netloc}{url.path}" == github.root + "/login/oauth/authorize"
    assert q["client_id"] == github.client_id and q["scope"] == ""
    assert q["redirect_uri"] == dashboard_hub.url + "/auth/github/callback"
    assert q["code_challenge_method"] == "S256" and len(q["code_challenge"]) == 43
    assert len(q["state"]) >= 40

    back = web.get(start.location)
    done = web.get(back.location)
    assert done.status == 302 and done.location == "/dashboard/requests"
    cookie = next(c for c in done.set_cookies() if c.startswith(f"{SESSION}="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie, "plain http: a Secure cookie would never come back"

    (exchange,) = github.exchanges
    assert exchange.accept == "application/json" and exchange.verifier_ok
    assert exchange.fields["redirect_uri"] == q["redirect_uri"]
    assert web.signed_in_as() == "@octocat"
    rows = dashboard_hub.query("SELECT login, github_id FROM users")
    assert [tuple(r) for r in rows] == [("@octocat", 4242)]


def test_the_github_token_never_appears_in_a_query_string(
    dashboard_hub: HubThread, github: FakeGitHub, web: WebClient
) -> None:
    assert web.github_sign_in(github).status == 302
    assert web.signed_in_as() == "@octocat"
    (token,) = github.tokens
    user_calls = [r for r in github.requests if r.path == "/api/v3/user"]
    assert len(user_calls) == 1
    assert user_calls[0].headers["Authorization"] == f"Bearer {token}"
    assert len(github.urls_seen()) == 3
    for r in github.requests:
        assert token not in r.query and "access_token" not in urllib.parse.parse_qs(r.query), (
            r.query
        )
        assert token not in r.body.decode(), "nor in a body the hub sends"
    assert token not in dashboard_hub.log()
    # Nor does the hub keep it anywhere.
    for table in ("users", "auth_tokens", "api_keys"):
        for row in dashboard_hub.query(f"SELECT * FROM {table}"):
            assert token not in json.dumps(tuple(row))


def _callback(web: WebClient, github: FakeGitHub) -> str:
    """Start a sign-in and let GitHub approve it: the callback URL the browser would follow."""
    start = web.get("/auth/github")
    back = web.get(start.location)
    assert back.status == 302
    return back.location


def _assert_refused(web: WebClient, url: str) -> None:
    resp = web.get(url)
    assert resp.status == 400, resp.text
    assert not session_set(resp)
    assert web.signed_in_as() is None


def test_a_missing_state_is_refused(
    dashboard_hub: HubThread, github: FakeGitHub, web: WebClient
) -> None:
    url = _callback(web, github)
    parts = urllib.parse.urlsplit(url)
    q = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k != "state"]
    _assert_refused(web, parts._replace(query=urllib.parse.urlencode(q)).geturl())
    assert not github.exchanges, "no code is exchanged without a matching state"


def test_an_altered_state_is_refused(
    dashboard_hub: HubThread, github: FakeGitHub, web: WebClient
) -> None:
    url = _callback(web, github)
    state = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["state"]
    altered = state[:-1] + ("A" if state[-1] != "A" else "B")
    _assert_refused(web, url.replace(f"state={state}", f"state={altered}"))
    assert not github.exchanges


def test_a_callback_without_the_state_cookie_is_refused(
    dashboard_hub: HubThread, github: FakeGitHub, web: WebClient
) -> None:
    """Login CSRF: an attacker's own callback URL, opened in the victim's browser."""
    url = _callback(WebClient(dashboard_hub.url), github)
    _assert_refused(web, url)
    assert not github.exchanges


def test_a_replayed_state_is_refused_even_with_its_cookie(
    dashboard_hub: HubThread, github: FakeGitHub, web: WebClient
) -> None:
    url = _callback(web, github)
    saved = [c for c in web.jar if c.name == "inferclub_oauth_state"]
    assert saved
    assert web.get(url).status == 302 and web.signed_in_as() == "@octocat"

    # The same browser again: its state cookie was cleared.
    _assert_refused(WebClient(dashboard_hub.url), url)
    # Another browser holding a copy of the cookie: the state was used up on the server.
    thief = WebClient(dashboard_hub.url)
    for c in saved:
        thief.jar.set_cookie(c)
    _assert_refused(thief, url)
    assert len(github.exchanges) == 1


def test_github_denied_is_a_400_without_a_session(
    dashboard_hub: HubThread, github: FakeGitHub, web: WebClient
) -> None:
    github.deny = True
    resp = web.github_sign_in(github)
    assert resp.status == 400 and "access_denied" in resp.text
    assert not session_set(resp) and web.signed_in_as() is None


def test_a_bad_pkce_verifier_gets_no_token(
    dashboard_hub: HubThread, github: FakeGitHub, web: WebClient
) -> None:
    start = web.get("/auth/github")
    # Swap the challenge GitHub records for one the hub's verifier cannot match.
    bad = start.location.replace("code_challenge=", "code_challenge=x")
    back = web.get(bad)
    resp = web.get(back.location)
    assert resp.status == 400 and "PKCE" in resp.text
    assert not github.exchanges[0].verifier_ok and not github.tokens
    assert web.signed_in_as() is None


def test_accounts_are_keyed_by_github_id(dashboard_hub: HubThread, github: FakeGitHub) -> None:
    first = WebClient(dashboard_hub.url)
    first.github_sign_in(github)
    assert first.signed_in_as() == "@octocat"
    key = dashboard_hub.create_key("@octocat")

    github.user = {"id": 4242, "login": "octo-renamed"}
    renamed = WebClient(dashboard_hub.url)
    renamed.github_sign_in(github)
    assert renamed.signed_in_as() == "@octo-renamed"
    assert [tuple(r) for r in dashboard_hub.query("SELECT id, login, github_id FROM users")] == [
        (1, "@octo-renamed", 4242)
    ]
    assert key[:11] in renamed.get("/dashboard/keys").text, "same account, same keys"

    github.user = {"id": 777, "login": "octocat"}
    other = WebClient(dashboard_hub.url)
    other.github_sign_in(github)
    assert other.signed_in_as() == "@octocat"
    assert key[:11] not in other.get("/dashboard/keys").text, "a new account"
    assert len(dashboard_hub.query("SELECT id FROM users")) == 2


@pytest.mark.subprocess  # the link `inferclub serve` prints, and the CLI's
def test_a_printed_sign_in_link_works_once(tmp_path: Path) -> None:
    with start_hub(tmp_path) as hub:
        link = printed_link(hub)
        first = WebClient(hub.url)
        resp = first.get(link)
        assert resp.status == 302 and resp.location == "/dashboard" and session_set(resp)
        assert first.signed_in_as() == hub.query("SELECT login FROM users")[0][0]

        again = WebClient(hub.url)
        resp = again.get(link)
        assert resp.status == 400 and "expired or was already used" in resp.text
        assert not session_set(resp) and again.signed_in_as() is None
        assert WebClient(hub.url).get("/auth/link?token=made-up").status == 400

        # A fresh one for a named user, from the CLI.
        hub.create_user("alice")
        out = hub.cli("users", "login-link", "alice").stdout.strip().splitlines()[-1]
        token = urllib.parse.parse_qs(urllib.parse.urlsplit(out).query)["token"][0]
        alice = WebClient(hub.url)
        assert alice.get(f"/auth/link?token={token}").status == 302
        assert alice.signed_in_as() == "alice"
        assert token not in hub.log(), "the access log records paths, not tokens"


@pytest.mark.subprocess  # the link `inferclub serve` prints
def test_a_sign_in_link_expires(tmp_path: Path) -> None:
    with start_hub(tmp_path, env={"INFERCLUB_LOGIN_LINK_TTL": "0.5"}) as hub:
        link = printed_link(hub)
        time.sleep(0.7)
        web = WebClient(hub.url)
        assert web.get(link).status == 400 and web.signed_in_as() is None


def test_no_github_app_means_no_github_sign_in(tmp_path: Path) -> None:
    with hub_in_thread(tmp_path) as hub:
        web = WebClient(hub.url)
        page = web.get("/login").text
        assert "github-login" not in page and "inferclub users login-link" in page
        assert web.get("/auth/github").status == 404


def test_logout_is_an_xsrf_protected_post_that_ends_the_session(
    dashboard_hub: HubThread, github: FakeGitHub, web: WebClient
) -> None:
    web.github_sign_in(github)
    stolen = web.cookie(SESSION)
    assert stolen and web.signed_in_as() == "@octocat"
    replay = WebClient(dashboard_hub.url)
    assert replay.get("/dashboard/keys", headers={"Cookie": f"{SESSION}={stolen}"}).status == 200
    assert web.get("/logout").status == 405
    assert web.post("/logout", xsrf=False).status == 403
    assert web.signed_in_as() == "@octocat"

    resp = web.post("/logout")
    assert resp.status == 302 and resp.location == "/login"
    assert web.signed_in_as() is None
    # The old cookie is worthless: the session is gone on the server, not just in the browser.
    resp = replay.get("/dashboard/keys", headers={"Cookie": f"{SESSION}={stolen}"})
    assert resp.status == 302 and resp.location.startswith("/login")


def test_dashboard_mutations_need_the_xsrf_token(
    dashboard_hub: HubThread, github: FakeGitHub, web: WebClient
) -> None:
    web.github_sign_in(github)
    assert web.post("/dashboard/keys", {"name": "x"}, xsrf=False).status == 403
    assert dashboard_hub.query("SELECT id FROM api_keys") == []
    resp = web.post("/dashboard/keys", {"name": "x"})
    assert resp.status == 303
    assert re.search(r'id="new-key"[^>]*>ic_', web.get(resp.location).text)
    key_id = dashboard_hub.query("SELECT id FROM api_keys")[0][0]
    assert web.post(f"/dashboard/keys/{key_id}/revoke", xsrf=False).status == 403
    assert dashboard_hub.query("SELECT revoked_at FROM api_keys")[0][0] is None
    # The playground's endpoints too (the token goes in a header there).
    body = json.dumps({"model": "m1", "messages": []}).encode()
    resp = web.request(
        "POST", "/dashboard/api/v1/chat/completions", body, {"Content-Type": "application/json"}
    )
    assert resp.status == 403 and "_xsrf" in resp.json()["error"]["message"]
    resp = web.request(
        "POST",
        "/dashboard/api/v1/chat/completions",
        body,
        {"Content-Type": "application/json", "X-XSRFToken": web.xsrf_token()},
    )
    assert resp.status == 404 and resp.json()["error"]["code"] == "model_not_found"
    # Signed out, the playground answers 401 in OpenAI's shape.
    anon = WebClient(dashboard_hub.url)
    resp = anon.request(
        "POST",
        "/dashboard/api/v1/chat/completions",
        body,
        {"Content-Type": "application/json", "X-XSRFToken": anon.xsrf_token()},
    )
    assert resp.status == 401 and resp.json()["error"]["code"] == "not_signed_in"


def test_v1_ignores_the_session_cookie(
    dashboard_hub: HubThread, github: FakeGitHub, web: WebClient
) -> None:
    web.github_sign_in(github)
    assert web.signed_in_as() == "@octocat"
    resp = web.get("/v1/models")
    assert resp.status == 401 and resp.json()["error"]["code"] == "missing_api_key"
    resp = web.request(
        "POST",
        "/v1/chat/completions",
        b'{"model": "m1", "messages": []}',
        {"Content-Type": "application/json", "X-XSRFToken": web.xsrf_token()},
    )
    assert resp.status == 401
    # And a bearer key needs no XSRF token.
    key = dashboard_hub.create_key("@octocat")
    with openai.OpenAI(base_url=dashboard_hub.api_base, api_key=key, max_retries=0) as client:
        assert client.models.list().data == []


def test_signing_in_again_replaces_the_session(
    dashboard_hub: HubThread, github: FakeGitHub, web: WebClient
) -> None:
    web.github_sign_in(github)
    first = web.cookie(SESSION)
    web.github_sign_in(github)
    assert web.cookie(SESSION) not in (None, first) and web.signed_in_as() == "@octocat"
    sessions = dashboard_hub.query("SELECT user_id FROM auth_tokens WHERE kind = 'session'")
    assert len(sessions) == 1, "the old session ended with the new sign-in"
