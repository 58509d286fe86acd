"""The account rules (``hub/accounts.py``) on a real SQLite store: keys, the local admin,
sign-in links, OAuth state, sessions, and the store's per-user lookups."""

from __future__ import annotations

import re
import time
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from inferclub.hub import keys
from inferclub.hub.accounts import AccountError, Accounts
from inferclub.hub.keycache import KeyCache
from inferclub.hub.store import AlreadyExists, ServiceInfo, SQLiteStore
from tests.support.hubproc import HubProcess

PEPPER = b"p" * 32
BASE = "https://hub.example.org"


@asynccontextmanager
async def opened(tmp_path: Path) -> AsyncIterator[tuple[Accounts, KeyCache, SQLiteStore]]:
    """Accounts over a fresh SQLite store, with a key cache as the hub has one."""
    store = SQLiteStore(tmp_path / "h.db")
    await store.open()
    # Never refreshed by itself: whatever it forgets, it forgets because it was told to.
    cache = KeyCache(store, PEPPER, refresh_interval=3600)
    await cache.start()
    try:
        yield Accounts(store, lambda: PEPPER, cache), cache, store
    finally:
        await cache.stop()
        await store.close()


def _token(link: str) -> str:
    return urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)["token"][0]


def _name_the_os_user(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    # getpass.getuser() reads these, in this order, before the passwd file.
    for var in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.setenv(var, name)


# -- keys -------------------------------------------------------------------------------------


async def test_an_issued_key_works_and_only_its_hash_is_stored(tmp_path: Path) -> None:
    async with opened(tmp_path) as (accounts, cache, store):
        alice = await accounts.create_user("alice")
        new = await accounts.issue_key(alice.id, "laptop")
        assert keys.is_well_formed(new.secret)
        assert new.record.prefix == keys.display_prefix(new.secret)
        assert new.record.name == "laptop"
        owner = await cache.authenticate(new.secret)
        assert owner is not None and (owner.user_id, owner.key_id) == (alice.id, new.record.id)
        rows = await (await store.db.execute("SELECT * FROM api_keys")).fetchall()
        assert new.secret not in repr([tuple(r) for r in rows])
        assert rows[0]["hash"] == keys.hash_key(PEPPER, new.secret)


async def test_a_revoked_key_is_refused_at_once(tmp_path: Path) -> None:
    async with opened(tmp_path) as (accounts, cache, _):
        alice = await accounts.create_user("alice")
        new = await accounts.issue_key(alice.id)
        assert await cache.authenticate(new.secret) is not None  # now cached

        assert await accounts.revoke_key(alice.id, new.record.id)
        assert await cache.authenticate(new.secret) is None, "no wait for a cache refresh"
        assert not await accounts.revoke_key(alice.id, new.record.id), "already revoked"


async def test_rotation_refuses_the_old_key_at_once_and_keeps_the_label(tmp_path: Path) -> None:
    async with opened(tmp_path) as (accounts, cache, _):
        alice = await accounts.create_user("alice")
        old = await accounts.issue_key(alice.id, "ci")
        assert await cache.authenticate(old.secret) is not None

        new = await accounts.rotate_key(alice.id, old.record.id)
        assert new is not None and new.secret != old.secret and new.record.name == "ci"
        assert await cache.authenticate(old.secret) is None
        owner = await cache.authenticate(new.secret)
        assert owner is not None and owner.key_id == new.record.id
        assert await accounts.rotate_key(alice.id, old.record.id) is None, "revoked: no rotation"


async def test_a_key_has_a_scope_that_rotation_keeps(tmp_path: Path) -> None:
    async with opened(tmp_path) as (accounts, cache, _):
        alice = await accounts.create_user("alice")
        default = await accounts.issue_key(alice.id)
        agent = await accounts.issue_key(alice.id, "rig", keys.AGENT)
        assert (default.record.scope, agent.record.scope) == ("all", "agent")
        owner = await cache.authenticate(agent.secret)
        assert owner is not None and owner.scope == "agent"
        new = await accounts.rotate_key(alice.id, agent.record.id)
        assert new is not None and new.record.scope == "agent"
        owner = await cache.authenticate(new.secret)
        assert owner is not None and owner.scope == "agent"
        with pytest.raises(AccountError, match="unknown scope"):
            await accounts.issue_key(alice.id, "", "admin")


async def test_nobody_revokes_or_rotates_another_users_key(tmp_path: Path) -> None:
    async with opened(tmp_path) as (accounts, cache, _):
        alice = await accounts.create_user("alice")
        bob = await accounts.create_user("bob")
        key = await accounts.issue_key(alice.id)
        assert not await accounts.revoke_key(bob.id, key.record.id)
        assert await accounts.rotate_key(bob.id, key.record.id) is None
        assert await cache.authenticate(key.secret) is not None


async def test_the_cli_picks_one_active_key_by_prefix_or_id(tmp_path: Path) -> None:
    async with opened(tmp_path) as (accounts, _, _):
        alice = await accounts.create_user("alice")
        key = await accounts.issue_key(alice.id)
        assert (await accounts.active_key(key.record.prefix)).id == key.record.id
        assert (await accounts.active_key(str(key.record.id))).id == key.record.id
        await accounts.revoke_key(alice.id, key.record.id)
        with pytest.raises(AccountError, match="no active key matches"):
            await accounts.active_key(key.record.prefix)


async def test_only_issuing_a_key_reads_the_pepper(tmp_path: Path) -> None:
    def no_pepper() -> bytes:
        raise AssertionError("the secrets file was read")

    async with opened(tmp_path) as (_, _, store):
        accounts = Accounts(store, no_pepper)  # as the CLI has it: no cache, pepper on demand
        alice = await accounts.create_user("alice")
        await accounts.create_login_link(alice.id, BASE, 60)
        with pytest.raises(AssertionError, match="secrets file"):
            await accounts.issue_key(alice.id)


# -- users and the local admin ----------------------------------------------------------------


async def test_local_logins_follow_githubs_rules(tmp_path: Path) -> None:
    async with opened(tmp_path) as (accounts, _, _):
        for bad in ("no spaces", "-dash", "dot.", "x" * 41, ""):
            with pytest.raises(AccountError, match="invalid login"):
                await accounts.create_user(bad)
        await accounts.create_user("a.b-c_d")
        with pytest.raises(AlreadyExists):
            await accounts.create_user("a.b-c_d")


async def test_the_local_admin_is_named_after_the_os_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _name_the_os_user(monkeypatch, "_Ann Smith!")
    async with opened(tmp_path) as (accounts, _, _):
        assert await accounts.local_admin() is None, "nothing is created unasked"
        admin = await accounts.local_admin(create=True)
        assert admin is not None and admin.login == "AnnSmith" and admin.github_id is None
        assert await accounts.local_admin(create=True) == admin


async def test_an_unusable_os_user_name_gives_admin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _name_the_os_user(monkeypatch, "!!!")
    async with opened(tmp_path) as (accounts, _, _):
        admin = await accounts.local_admin(create=True)
        assert admin is not None and admin.login == "admin"


async def test_github_users_are_not_the_local_admin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _name_the_os_user(monkeypatch, "octocat")
    async with opened(tmp_path) as (accounts, _, _):
        github = await accounts.github_user(583231, "octocat")
        admin = await accounts.local_admin(create=True)
        assert admin is not None and admin.login == "octocat" and admin.github_id is None
        assert admin.id != github.id and github.login == "@octocat"


async def test_a_github_sign_in_never_touches_a_local_user_of_the_same_login(
    tmp_path: Path,
) -> None:
    async with opened(tmp_path) as (accounts, cache, _):
        local = await accounts.create_user("octocat")
        key = await accounts.issue_key(local.id)
        github = await accounts.github_user(583231, "octocat")
        assert github.id != local.id and github.login == "@octocat"
        assert await accounts.find_user("octocat") == local, "LOGIN means the local user"
        assert await accounts.find_user("@octocat") == github
        owner = await cache.authenticate(key.secret)
        assert owner is not None and (owner.user_id, owner.login) == (local.id, "octocat")
        # Signing in again (or after a rename on GitHub) is still that GitHub account.
        assert (await accounts.github_user(583231, "octocat")).id == github.id
        renamed = await accounts.github_user(583231, "octo-cat")
        assert renamed.id == github.id and renamed.login == "@octo-cat"
        assert await accounts.find_user("octocat") == local


async def test_a_login_github_should_never_send_is_refused(tmp_path: Path) -> None:
    async with opened(tmp_path) as (accounts, _, store):
        for bad in ("", "a b", "x" * 101, "../admin", "@octocat"):
            with pytest.raises(AccountError):
                await accounts.github_user(1, bad)
        assert await store.list_users() == []


@pytest.mark.subprocess
def test_quickstart_and_the_printed_link_name_the_same_admin(tmp_path: Path) -> None:
    env = dict.fromkeys(("LOGNAME", "USER", "LNAME", "USERNAME"), "!!!")
    hub = HubProcess(tmp_path, "--quickstart", env=env).start()
    try:
        deadline = time.monotonic() + 10
        while not any("Dashboard: sign in" in ln for ln in hub.stdout_lines):
            assert time.monotonic() < deadline, hub.stdout_lines
            time.sleep(0.05)
        out = "\n".join(hub.stdout_lines)
        assert "Created local user 'admin'" in out and "sign in as admin" in out
    finally:
        assert hub.stop() == 0


# -- sign-in links and OAuth state ------------------------------------------------------------


async def test_a_login_link_works_once(tmp_path: Path) -> None:
    async with opened(tmp_path) as (accounts, _, _):
        alice = await accounts.create_user("alice")
        link = await accounts.create_login_link(alice.id, BASE + "/", 60)
        assert re.fullmatch(re.escape(BASE) + r"/auth/link\?token=[\w-]+", link)
        assert await accounts.consume_login_link(_token(link)) == alice
        assert await accounts.consume_login_link(_token(link)) is None
        assert await accounts.consume_login_link("made-up") is None
        assert await accounts.consume_login_link("") is None


async def test_a_login_link_expires(tmp_path: Path) -> None:
    async with opened(tmp_path) as (accounts, _, _):
        alice = await accounts.create_user("alice")
        link = await accounts.create_login_link(alice.id, BASE, 0)
        assert await accounts.consume_login_link(_token(link)) is None


async def test_a_link_for_nobody_creates_the_local_admin_when_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _name_the_os_user(monkeypatch, "ann")
    async with opened(tmp_path) as (accounts, _, store):
        link = await accounts.create_login_link(None, BASE, 60)
        assert await store.count_users() == 0, "not before the link is used"
        user = await accounts.consume_login_link(_token(link))
        assert user is not None and user.login == "ann"


async def test_oauth_state_works_once(tmp_path: Path) -> None:
    async with opened(tmp_path) as (accounts, _, _):
        state, verifier = await accounts.create_oauth_state("/dashboard/keys")
        got = await accounts.consume_oauth_state(state)
        assert got is not None and (got.verifier, got.next_path) == (verifier, "/dashboard/keys")
        assert await accounts.consume_oauth_state(state) is None


# -- sessions ---------------------------------------------------------------------------------


async def test_sessions_start_replace_and_end(tmp_path: Path) -> None:
    async with opened(tmp_path) as (accounts, _, _):
        alice = await accounts.create_user("alice")
        first = await accounts.start_session(alice.id)
        assert await accounts.session_user(first) == alice
        second = await accounts.start_session(alice.id, replacing=first)
        assert second != first
        assert await accounts.session_user(first) is None
        assert await accounts.session_user(second) == alice
        await accounts.end_session(second)
        assert await accounts.session_user(second) is None
        assert await accounts.session_user("made-up") is None


# -- the store's per-user lookups -------------------------------------------------------------


async def test_get_key_and_get_provider_answer_only_their_owner(tmp_path: Path) -> None:
    async with opened(tmp_path) as (accounts, _, store):
        alice = await accounts.create_user("alice")
        bob = await accounts.create_user("bob")
        key = await accounts.issue_key(alice.id, "laptop")
        services = [ServiceInfo("chat", "llm", "vllm", ("tools",), ("m1", "m2"))]
        provider = await store.save_heartbeat(
            alice.id, "box", "http://10.0.0.5:8000", "1.0", {}, services, time.time()
        )

        mine = await store.get_key(alice.id, key.record.id)
        assert mine is not None and (mine.name, mine.prefix) == ("laptop", key.record.prefix)
        assert await store.get_key(bob.id, key.record.id) is None
        assert await store.get_key(alice.id, key.record.id + 1) is None
        await accounts.revoke_key(alice.id, key.record.id)
        revoked = await store.get_key(alice.id, key.record.id)
        assert revoked is not None and not revoked.active, "revoked keys are still found"

        assert await store.get_provider(alice.id, provider.id) == provider
        assert await store.get_provider(bob.id, provider.id) is None
        assert await store.get_provider(alice.id, provider.id + 1) is None
