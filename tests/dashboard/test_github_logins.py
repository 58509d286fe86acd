"""GitHub users and local users never collide (issue 9). A GitHub account whose login equals a
local user's used to rename that local user on its first sign-in, and `inferclub keys create
LOGIN` then minted keys for the GitHub account. GitHub accounts now sign in as `@login`, a
namespace no local login can enter, and the CLI's LOGIN always means the local user."""

from __future__ import annotations

import urllib.parse

import openai
import pytest

from tests.support.fakes.github import FakeGitHub
from tests.support.hubproc import HubProcess
from tests.support.web import WebClient

pytestmark = pytest.mark.subprocess  # the CLI is the contract


def owner_login(hub: HubProcess, key: str) -> str:
    (row,) = hub.query(
        "SELECT u.login FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.prefix = ?",
        key[:11],
    )
    return str(row["login"])


def test_a_github_sign_in_leaves_the_local_user_of_that_login_alone(
    browser_hub: HubProcess, github: FakeGitHub
) -> None:
    hub = browser_hub
    hub.create_user("octocat")
    local_key = hub.create_key("octocat", "laptop")

    web = WebClient(hub.url)
    assert web.github_sign_in(github).status == 302
    assert web.signed_in_as() == "@octocat"
    users = [tuple(r) for r in hub.query("SELECT login, github_id FROM users ORDER BY id")]
    assert users == [("octocat", None), ("@octocat", 4242)]
    assert local_key[:11] not in web.get("/dashboard/keys").text, "a separate account"
    with openai.OpenAI(base_url=hub.api_base, api_key=local_key, max_retries=0) as client:
        assert client.models.list().data == [], "the local user's key still works"

    # LOGIN means the local user; `@login` the GitHub account.
    assert owner_login(hub, hub.create_key("octocat")) == "octocat"
    assert owner_login(hub, hub.create_key("@octocat")) == "@octocat"
    listing = hub.cli("keys", "list", "octocat").stdout
    assert local_key[:11] in listing
    missing = hub.cli("keys", "create", "@nobody", check=False)
    assert missing.returncode == 1 and "no user '@nobody'" in missing.stderr

    # The local user still signs in as itself, with its own keys.
    link = hub.cli("users", "login-link", "octocat").stdout.strip().splitlines()[-1]
    local = WebClient(hub.url)
    assert local.get("/auth/link?" + urllib.parse.urlsplit(link).query).status == 302
    assert local.signed_in_as() == "octocat"
    assert local_key[:11] in local.get("/dashboard/keys").text
