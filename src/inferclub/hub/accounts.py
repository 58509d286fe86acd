"""Account rules: users, API keys, one-time sign-in links, GitHub sign-in state, sessions.

The CLI, the dashboard and the sign-in handlers all go through :class:`Accounts`, so a key is
issued, rotated and revoked one way, and the key cache is dropped in one place afterwards.
Every secret handed out here (keys, link and session tokens, OAuth state) is stored only as
a hash; the caller shows it to its owner once.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import re
import secrets
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from inferclub.hub import keys
from inferclub.hub.config import Settings
from inferclub.hub.keycache import KeyCache
from inferclub.hub.store import AlreadyExists, ApiKey, Store, User

#: Kinds of stored sign-in tokens.
SESSION = "session"
LOGIN_LINK = "login_link"
OAUTH_STATE = "oauth_state"

SESSION_DAYS = 30
#: GitHub's authorization codes live 10 minutes; the state that goes with one need not outlive it.
STATE_TTL = 600.0
LINK_PATH = "/auth/link"
#: The local admin's login when the OS user name gives nothing usable.
FALLBACK_ADMIN_LOGIN = "admin"
#: Local logins: up to 40 letters, digits, '.', '_' or '-', starting and ending with a letter
#: or digit, so they read well in URLs, shell commands and the dashboard.
LOGIN_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,38}[A-Za-z0-9])?$")
#: GitHub accounts have a namespace of their own: their login on the hub is ``@`` + their
#: GitHub login, which no local login can equal. A GitHub sign-in never renames or takes over
#: a local user, and ``inferclub keys create alice`` always means the local user alice.
GITHUB_PREFIX = "@"
#: What the hub accepts as a GitHub login (github.com: letters, digits and '-', at most 39;
#: Enterprise adds '_' and '.'): anything else from the GitHub API is refused, not stored.
GITHUB_LOGIN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class AccountError(Exception):
    """A request the account rules refuse; the message is meant for the user."""


@dataclass(frozen=True)
class IssuedKey:
    """A new key. ``secret`` is the key itself: shown to its owner once, never stored."""

    secret: str
    record: ApiKey


@dataclass(frozen=True)
class OAuthState:
    """What a GitHub sign-in keeps between the redirect to GitHub and the way back."""

    verifier: str
    next_path: str


def new_token() -> str:
    """A 256-bit random secret, URL-safe."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def local_admin_login() -> str:
    """The login a new local admin gets: the OS user name made a valid login, else
    :data:`FALLBACK_ADMIN_LOGIN`."""
    try:
        name = getpass.getuser()
    except (OSError, KeyError):  # no name in the environment and none in the passwd file
        name = ""
    login = re.sub(r"[^A-Za-z0-9._-]", "", name).strip("._-")[:40].rstrip("._-")
    return login if LOGIN_RE.match(login) else FALLBACK_ADMIN_LOGIN


def link_base_url(settings: Settings, host: str, port: int) -> str:
    """The base URL printed sign-in links use: ``public_url``, else the bound address."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{host if ':' not in host else f'[{host}]'}:{port}"


class Accounts:
    """The account rules over a store.

    ``pepper`` is called only when a key is issued, so commands that issue none never read
    the secrets file. ``key_cache`` is the hub's own cache, dropped after every key change so
    a revoked key is refused at once; the CLI runs in another process and has none: the hub
    sees the store's ``keys_version`` change within ``key_cache_refresh`` seconds.
    """

    def __init__(
        self, store: Store, pepper: Callable[[], bytes], key_cache: KeyCache | None = None
    ) -> None:
        self.store = store
        self._pepper = pepper
        self._key_cache = key_cache

    # -- users --------------------------------------------------------------------------------

    async def create_user(self, login: str) -> User:
        """A local user (no GitHub account). Raises :class:`AccountError` for an invalid
        login and the store's ``AlreadyExists`` for a taken one."""
        if not LOGIN_RE.match(login):
            raise AccountError(f"invalid login {login!r}: use letters, digits, '.', '_' or '-'")
        return await self.store.create_user(login)

    async def github_user(self, github_id: int, login: str) -> User:
        """The user of a GitHub account, created on its first sign-in, named
        :data:`GITHUB_PREFIX` + ``login``. Keyed by GitHub's numeric id: logins can be renamed
        and then taken by someone else."""
        if not GITHUB_LOGIN_RE.match(login):
            raise AccountError("GitHub sent a login this hub cannot use.")
        return await self.store.upsert_github_user(github_id, GITHUB_PREFIX + login)

    async def find_user(self, login: str) -> User | None:
        """The user the CLI's LOGIN names: a local user, or with a leading
        :data:`GITHUB_PREFIX` a GitHub account (``@octocat``)."""
        user = await self.store.get_user(login)
        github = login.startswith(GITHUB_PREFIX)
        if user is None or (user.github_id is not None) != github:
            return None
        return user

    async def local_admin(self, create: bool = False) -> User | None:
        """The local admin of a hub without GitHub: its first local (non-GitHub) user. With
        ``create``, one named by :func:`local_admin_login` is created when there is none."""
        user = next((u for u in await self.store.list_users() if u.github_id is None), None)
        if user is None and create:
            login = local_admin_login()
            try:
                user = await self.store.create_user(login)
            except AlreadyExists:  # another process sharing the store created it meanwhile
                user = await self.store.get_user(login)
        return user

    # -- API keys -----------------------------------------------------------------------------

    async def issue_key(self, user_id: int, name: str = "", scope: str = keys.ALL) -> IssuedKey:
        """A new key of ``scope`` (:data:`keys.SCOPES`); :class:`AccountError` for another."""
        if scope not in keys.SCOPES:
            raise AccountError(f"unknown scope {scope!r}: use one of {', '.join(keys.SCOPES)}")
        secret = keys.generate()
        record = await self.store.create_key(
            user_id, name, keys.display_prefix(secret), self._hash(secret), scope
        )
        self._keys_changed()
        return IssuedKey(secret, record)

    async def rotate_key(self, user_id: int, key_id: int) -> IssuedKey | None:
        """Revoke the user's active key ``key_id`` and issue its replacement (same label and
        scope; the provider names it owns pass to it) in one transaction; None when there is
        no such active key."""
        secret = keys.generate()
        record = await self.store.rotate_key(
            user_id, key_id, keys.display_prefix(secret), self._hash(secret)
        )
        self._keys_changed()
        return IssuedKey(secret, record) if record is not None else None

    async def revoke_key(self, user_id: int, key_id: int) -> bool:
        """False when the user has no such active key. The provider names the key owned are
        free for the user's other keys from now on."""
        revoked = await self.store.revoke_key(key_id, user_id)
        self._keys_changed()
        return revoked

    async def active_key(self, prefix_or_id: str) -> ApiKey:
        """The one active key whose display prefix or id is ``prefix_or_id`` (any user's:
        the CLI is the hub's operator)."""
        found = [k for k in await self.store.find_keys(prefix_or_id) if k.active]
        if not found:
            raise AccountError(f"no active key matches {prefix_or_id!r}")
        if len(found) > 1:
            raise AccountError(f"{prefix_or_id!r} matches {len(found)} keys; use the numeric id")
        return found[0]

    def _hash(self, secret: str) -> str:
        return keys.hash_key(self._pepper(), secret)

    def _keys_changed(self) -> None:
        # Also after a write that matched nothing: the cache may hold what made it miss.
        if self._key_cache is not None:
            self._key_cache.invalidate()

    # -- one-time sign-in links ---------------------------------------------------------------

    async def create_login_link(self, user_id: int | None, base_url: str, ttl: float) -> str:
        """A sign-in URL for ``user_id`` (None: the local admin, created on first use) that
        works once within ``ttl`` seconds."""
        token = new_token()
        await self.store.create_auth_token(
            LOGIN_LINK, token_hash(token), user_id, time.time() + ttl
        )
        return f"{base_url.rstrip('/')}{LINK_PATH}?{urllib.parse.urlencode({'token': token})}"

    async def consume_login_link(self, token: str) -> User | None:
        """The user a link signs in; None when it is unknown, expired or already used."""
        if not token:
            return None
        record = await self.store.consume_auth_token(LOGIN_LINK, token_hash(token), time.time())
        if record is None:
            return None
        if record.user_id is None:
            return await self.local_admin(create=True)
        return await self.store.get_user_by_id(record.user_id)

    # -- GitHub sign-in state -----------------------------------------------------------------

    async def create_oauth_state(self, next_path: str) -> tuple[str, str]:
        """``(state, PKCE verifier)`` for one GitHub sign-in, valid :data:`STATE_TTL`."""
        state, verifier = new_token(), new_token()
        data = json.dumps({"verifier": verifier, "next": next_path})
        await self.store.create_auth_token(
            OAUTH_STATE, token_hash(state), None, time.time() + STATE_TTL, data
        )
        return state, verifier

    async def consume_oauth_state(self, state: str) -> OAuthState | None:
        """The sign-in ``state`` belongs to, once; None when unknown, expired or used."""
        record = await self.store.consume_auth_token(OAUTH_STATE, token_hash(state), time.time())
        if record is None:
            return None
        data = json.loads(record.data)
        return OAuthState(verifier=data["verifier"], next_path=data.get("next") or "")

    # -- dashboard sessions -------------------------------------------------------------------

    async def start_session(self, user_id: int, replacing: str | None = None) -> str:
        """A new session token (never a reused one); ``replacing`` ends that session first."""
        if replacing:
            await self.end_session(replacing)
        token = new_token()
        await self.store.create_auth_token(
            SESSION, token_hash(token), user_id, time.time() + SESSION_DAYS * 86400
        )
        return token

    async def session_user(self, token: str) -> User | None:
        record = await self.store.get_auth_token(SESSION, token_hash(token), time.time())
        if record is None or record.user_id is None:
            return None
        return await self.store.get_user_by_id(record.user_id)

    async def end_session(self, token: str) -> None:
        """Ends the session everywhere: the store forgets it, whoever holds the cookie."""
        await self.store.delete_auth_token(SESSION, token_hash(token))
